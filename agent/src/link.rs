//! Which enforcing program an interface needs, from its link type (ARPHRD).
//!
//! XDP hands a program the packet from the device's link-layer header. Ethernet-like devices
//! have one; tunnels that deliver decapsulated IP (WireGuard, GRE, ipip, sit, ip6tnl, tun in
//! L3 mode, PPP, raw-IP modems) have none, and the packet starts at the IP header. An Ethernet
//! parser on such a device reads IP addresses as an ethertype and lets everything pass, so
//! the agent picks the program by link type, and refuses types whose layout it does not know.

use crate::error::Error;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// How packets on a device begin: which enforcing program runs there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkLayer {
    /// An Ethernet header: Ethernet, veth, VXLAN, macvlan, bridges, loopback.
    Ethernet,
    /// The IP header itself: tunnels delivering decapsulated IP.
    Ip,
}

impl LinkLayer {
    /// The program name in the object file.
    pub const fn program(self) -> &'static str {
        match self {
            LinkLayer::Ethernet => jitgate_common::programs::ENFORCE,
            LinkLayer::Ip => jitgate_common::programs::ENFORCE_L3,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            LinkLayer::Ethernet => "ethernet",
            LinkLayer::Ip => "ip",
        }
    }

    /// The layout of a device of type `arphrd` with interface flags `flags`, if known.
    pub fn from_arphrd(arphrd: u16, flags: u32) -> Option<LinkLayer> {
        let point_to_point = flags & libc::IFF_POINTOPOINT as u32 != 0;
        match arphrd {
            libc::ARPHRD_ETHER | libc::ARPHRD_LOOPBACK => Some(LinkLayer::Ethernet),
            ARPHRD_NONE
            | ARPHRD_RAWIP
            | libc::ARPHRD_PPP
            | libc::ARPHRD_TUNNEL
            | libc::ARPHRD_TUNNEL6
            | libc::ARPHRD_SIT => Some(LinkLayer::Ip),
            // A GRE device without a fixed remote (NBMA, or a multicast remote) has header
            // operations that present the outer IP and GRE headers as its link-layer header;
            // only the point-to-point form starts at the inner IP header.
            libc::ARPHRD_IPGRE | ARPHRD_IP6GRE if point_to_point => Some(LinkLayer::Ip),
            _ => None,
        }
    }
}

/// WireGuard, tun in L3 mode (`IFF_TUN`).
const ARPHRD_NONE: u16 = 0xfffe;
/// Raw IP (WWAN modems, rmnet).
const ARPHRD_RAWIP: u16 = 519;
const ARPHRD_IP6GRE: u16 = 823;

/// The link layer of `iface` in the calling thread's network namespace, read with the
/// SIOCGIFHWADDR (link type) and SIOCGIFFLAGS ioctls on a socket of that namespace.
pub fn link_layer(iface: &str) -> Result<LinkLayer, Error> {
    let (arphrd, flags) = link_type(iface)?;
    LinkLayer::from_arphrd(arphrd, flags).ok_or_else(|| Error::UnsupportedLink {
        iface: iface.to_string(),
        arphrd,
    })
}

/// ARPHRD type and interface flags of `iface`.
fn link_type(iface: &str) -> Result<(u16, u32), Error> {
    let bytes = iface.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(Error::NoSuchInterface(iface.to_string()));
    }
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(Error::Io(std::io::Error::last_os_error()));
    }
    // SAFETY: a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let ioctl = |req: &mut libc::ifreq, op| {
        // SAFETY: a valid socket and a valid, NUL-terminated ifreq.
        if unsafe { libc::ioctl(sock.as_raw_fd(), op, req as *mut libc::ifreq) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.raw_os_error() == Some(libc::ENODEV) {
                Error::NoSuchInterface(iface.to_string())
            } else {
                Error::Io(e)
            });
        }
        Ok(())
    };
    ioctl(&mut req, libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled the hardware-address member of the union.
    let arphrd = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    ioctl(&mut req, libc::SIOCGIFFLAGS)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member (a C short: the low 16 flag bits).
    let flags = unsafe { req.ifr_ifru.ifru_flags } as u16 as u32;
    Ok((arphrd, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_types() {
        let p2p = libc::IFF_POINTOPOINT as u32;
        assert_eq!(
            LinkLayer::from_arphrd(libc::ARPHRD_ETHER, 0),
            Some(LinkLayer::Ethernet)
        );
        assert_eq!(
            LinkLayer::from_arphrd(libc::ARPHRD_LOOPBACK, 0),
            Some(LinkLayer::Ethernet)
        );
        assert_eq!(
            LinkLayer::from_arphrd(ARPHRD_NONE, p2p),
            Some(LinkLayer::Ip)
        );
        assert_eq!(
            LinkLayer::from_arphrd(libc::ARPHRD_IPGRE, p2p),
            Some(LinkLayer::Ip)
        );
        assert_eq!(LinkLayer::from_arphrd(libc::ARPHRD_IPGRE, 0), None);
        assert_eq!(LinkLayer::from_arphrd(ARPHRD_IP6GRE, 0), None);
        assert_eq!(LinkLayer::from_arphrd(libc::ARPHRD_INFINIBAND, 0), None);
    }

    #[test]
    fn loopback_is_ethernet() {
        assert_eq!(link_layer("lo").unwrap(), LinkLayer::Ethernet);
        assert!(matches!(
            link_layer("no-such-if0"),
            Err(Error::NoSuchInterface(_))
        ));
        assert!(matches!(link_layer(""), Err(Error::NoSuchInterface(_))));
    }
}
