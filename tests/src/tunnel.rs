//! A point-to-point L3 tunnel between two namespaces, carried in UDP over their outer
//! addresses: a tun device (IFF_TUN, no packet information) in each namespace and a relay
//! thread per side, which is how userspace VPNs (wireguard-go, OpenVPN) deliver decapsulated
//! packets. The tun device has link type ARPHRD_NONE, like a kernel WireGuard device: packets
//! enter the stack at their IP header, never crossing the outer interface's XDP hook.
//!
//! Used because this kernel has neither GRE, ipip nor WireGuard built in (and no modules).
//! Dropping the tunnel stops the relays and closes the tun devices, which deletes them.

use crate::netns::ip;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 205, int)`: sets the device's link type (ARPHRD).
const TUNSETLINK: libc::c_ulong = 0x4004_54cd;

/// One end: the namespace, the tun device's name and its inner addresses, the outer UDP
/// endpoint.
pub struct End<'a> {
    pub ns: &'a str,
    pub dev: &'a str,
    /// Inner addresses with prefix length (`203.0.113.1/24`), routed through the device.
    pub inner: &'a [&'a str],
    pub outer: SocketAddr,
}

pub struct UdpTunnel {
    stop: Arc<AtomicBool>,
    relays: Vec<JoinHandle<()>>,
}

impl UdpTunnel {
    pub fn new(a: &End, b: &End) -> io::Result<UdpTunnel> {
        let mut t = UdpTunnel {
            stop: Arc::new(AtomicBool::new(false)),
            relays: Vec::new(),
        };
        for (me, peer) in [(a, b), (b, a)] {
            let (tun, udp) = open_end(me, peer.outer)?;
            let stop = t.stop.clone();
            t.relays
                .push(std::thread::spawn(move || relay(tun, udp, stop)));
            for addr in me.inner {
                let mut args = vec!["-n", me.ns, "addr", "add", addr, "dev", me.dev];
                if addr.contains(':') {
                    args.push("nodad");
                }
                ip(&args)?;
            }
            ip(&["-n", me.ns, "link", "set", me.dev, "mtu", "1400", "up"])?;
        }
        Ok(t)
    }
}

impl Drop for UdpTunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for r in self.relays.drain(..) {
            let _ = r.join();
        }
    }
}

/// Creates the tun device and the UDP socket inside `me.ns`.
fn open_end(me: &End, peer: SocketAddr) -> io::Result<(OwnedFd, UdpSocket)> {
    let path = Path::new("/run/netns").join(me.ns);
    let dev = me.dev.to_string();
    let local = me.outer;
    jitgate_agent::netns::run_in(&path, move || {
        let tun = open_tun(&dev)?;
        let udp = UdpSocket::bind(local)?;
        udp.connect(peer)?;
        udp.set_nonblocking(true)?;
        Ok((tun, udp))
    })?
}

/// A bare tun device named `dev` in namespace `ns` (link type ARPHRD_NONE, down, carrying
/// nothing), deleted when the returned descriptor is closed.
pub fn tun_device(ns: &str, dev: &str) -> io::Result<OwnedFd> {
    let path = Path::new("/run/netns").join(ns);
    let name = dev.to_string();
    jitgate_agent::netns::run_in(&path, move || open_tun(&name))?
}

/// Makes a (down) tun device claim link type `arphrd`: a stand-in for device types this
/// kernel does not build.
pub fn set_link_type(tun: &OwnedFd, arphrd: u16) -> io::Result<()> {
    // SAFETY: a tun descriptor; the argument is the link type by value.
    if unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            TUNSETLINK as _,
            libc::c_ulong::from(arphrd),
        )
    } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn open_tun(dev: &str) -> io::Result<OwnedFd> {
    if dev.is_empty() || dev.len() >= libc::IFNAMSIZ {
        return Err(io::Error::other(format!("bad tun name {dev:?}")));
    }
    // SAFETY: a NUL-terminated path literal.
    let fd = unsafe {
        libc::open(
            c"/dev/net/tun".as_ptr(),
            libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor we own.
    let tun = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: an all-zero ifreq is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(dev.as_bytes()) {
        *d = *s as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: a tun descriptor and a valid ifreq.
    if unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(tun)
}

/// Moves packets both ways until `stop`: tun → UDP (encapsulate), UDP → tun (decapsulate).
fn relay(tun: OwnedFd, udp: UdpSocket, stop: Arc<AtomicBool>) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let mut fds = [
            PollFd::new(tun.as_fd(), PollFlags::POLLIN),
            PollFd::new(udp.as_fd(), PollFlags::POLLIN),
        ];
        if poll(&mut fds, PollTimeout::from(100u16)).is_err() {
            continue;
        }
        // Errors (a peer not yet listening, a full queue) lose one packet, as on a real link.
        loop {
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::read(tun.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            let _ = udp.send(&buf[..n as usize]);
        }
        while let Ok(n) = udp.recv(&mut buf) {
            // SAFETY: buf holds n initialised bytes.
            let _ = unsafe { libc::write(tun.as_raw_fd(), buf.as_ptr().cast(), n) };
        }
    }
}
