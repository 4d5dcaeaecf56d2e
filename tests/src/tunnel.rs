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

/// A real WireGuard tunnel between two namespaces: one `wireguard-go` (the userspace
/// implementation, as this kernel has no WireGuard) per end, configured with `wg` — real
/// Noise handshakes and encryption over the outer UDP addresses, decrypted packets delivered
/// through a tun device (ARPHRD_NONE, the same link type as a kernel WireGuard device).
/// Dropping it stops both processes, which deletes the devices.
pub struct WireGuard {
    procs: Vec<std::process::Child>,
    sockets: Vec<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

impl WireGuard {
    /// `a` and `b` name the devices (distinct: wireguard-go's control sockets share one
    /// directory across namespaces) and their inner addresses; outer ports are `outer.port()`.
    pub fn new(a: &End, b: &End) -> io::Result<WireGuard> {
        use std::process::{Command, Stdio};
        let dir = tempfile::tempdir()?;
        let mut wg = WireGuard {
            procs: Vec::new(),
            sockets: Vec::new(),
            _dir: dir,
        };
        let key = |name: &str| -> io::Result<(std::path::PathBuf, String)> {
            let private = Command::new("wg").arg("genkey").output()?;
            if !private.status.success() {
                return Err(io::Error::other("wg genkey failed"));
            }
            let path = wg._dir.path().join(name);
            std::fs::write(&path, &private.stdout)?;
            let mut child = Command::new("wg")
                .arg("pubkey")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()?;
            if let Some(mut stdin) = child.stdin.take() {
                io::Write::write_all(&mut stdin, &private.stdout)?;
            }
            let public = child.wait_with_output()?;
            Ok((
                path,
                String::from_utf8_lossy(&public.stdout).trim().to_string(),
            ))
        };
        let (ka, pa) = key("a.key")?;
        let (kb, pb) = key("b.key")?;
        for (end, key, peer_pub, peer) in [(a, &ka, &pb, b), (b, &kb, &pa, a)] {
            let child = Command::new("ip")
                .args(["netns", "exec", end.ns, "wireguard-go", "-f", end.dev])
                .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            wg.procs.push(child);
            let sock = Path::new("/var/run/wireguard").join(format!("{}.sock", end.dev));
            wg.sockets.push(sock.clone());
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while !sock.exists() {
                if std::time::Instant::now() > deadline {
                    return Err(io::Error::other(format!(
                        "wireguard-go did not create {}",
                        sock.display()
                    )));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let st = Command::new("ip")
                .args(["netns", "exec", end.ns, "wg", "set", end.dev])
                .args(["listen-port", &end.outer.port().to_string(), "private-key"])
                .arg(key)
                .args(["peer", peer_pub, "allowed-ips", "0.0.0.0/0,::/0"])
                .args(["endpoint", &peer.outer.to_string()])
                .status()?;
            if !st.success() {
                return Err(io::Error::other(format!("wg set {} failed", end.dev)));
            }
            for addr in end.inner {
                ip(&["-n", end.ns, "addr", "add", addr, "dev", end.dev])?;
            }
            ip(&["-n", end.ns, "link", "set", end.dev, "up"])?;
        }
        Ok(wg)
    }
}

impl Drop for WireGuard {
    fn drop(&mut self) {
        for p in &mut self.procs {
            // SIGTERM lets wireguard-go remove its device and control socket.
            if let Ok(pid) = i32::try_from(p.id()) {
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            while matches!(p.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            let _ = p.kill();
            let _ = p.wait();
        }
        for s in &self.sockets {
            let _ = std::fs::remove_file(s);
        }
    }
}
