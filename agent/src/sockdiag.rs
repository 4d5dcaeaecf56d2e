//! TCP sockets through netlink sock_diag: list the established connections on protected
//! ports (adopted at first attach, so enabling enforcement over SSH does not cut the session
//! that did it) and destroy sockets (SOCK_DESTROY, for `cut` and revocation, so sessions end
//! at once instead of hanging until TCP gives up).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCP_ESTABLISHED: u32 = 1;
const NLMSG_HDRLEN: usize = 16;
/// inet_diag_req_v2: family, protocol, ext, pad, states, sockid (48 bytes).
const REQ_LEN: usize = 56;
/// inet_diag_msg up to and including the sockid.
const MSG_ID_END: usize = 4 + 48;

/// A local TCP socket: `local` is this host's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TcpConn {
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

struct Netlink(libc::c_int);

impl Drop for Netlink {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let s = Netlink(fd);
        let tv = libc::timeval {
            tv_sec: 2,
            tv_usec: 0,
        };
        // SAFETY: valid option struct.
        unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            )
        };
        Ok(s)
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: buffer and address are valid for the call.
        let n = unsafe {
            libc::sendto(
                self.0,
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn request(
    kind: u16,
    flags: u16,
    family: u8,
    proto: u8,
    states: u32,
    conn: Option<(&TcpConn, [u8; 8])>,
) -> Vec<u8> {
    let len = NLMSG_HDRLEN + REQ_LEN;
    let mut m = vec![0u8; len];
    m[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
    m[4..6].copy_from_slice(&kind.to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m[8..12].copy_from_slice(&1u32.to_ne_bytes());
    let r = &mut m[NLMSG_HDRLEN..];
    r[0] = family;
    r[1] = proto;
    r[4..8].copy_from_slice(&states.to_ne_bytes());
    // sockid at r[8..56]: sport, dport (be16), src[16], dst[16], ifindex, cookie[2].
    // INET_DIAG_NOCOOKIE unless a cookie names the exact socket.
    r[48..56].copy_from_slice(&[0xff; 8]);
    if let Some((c, cookie)) = conn {
        r[8..10].copy_from_slice(&c.local.port().to_be_bytes());
        r[10..12].copy_from_slice(&c.remote.port().to_be_bytes());
        r[12..28].copy_from_slice(&addr16(c.local.ip()));
        r[28..44].copy_from_slice(&addr16(c.remote.ip()));
        r[48..56].copy_from_slice(&cookie);
    }
    m
}

fn addr16(ip: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b = a.octets(),
    }
    b
}

fn parse_id(family: u8, id: &[u8]) -> Option<TcpConn> {
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    let ip = |b: &[u8]| -> Option<IpAddr> {
        Some(if family == libc::AF_INET as u8 {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?))
        })
    };
    Some(TcpConn {
        local: SocketAddr::new(ip(&id[4..20])?, sport),
        remote: SocketAddr::new(ip(&id[20..36])?, dport),
    })
}

/// TCP states that are connections (not LISTEN, TIME_WAIT or CLOSE), as a diag mask.
const CONNECTED_STATES: u32 =
    (1 << 1) | (1 << 2) | (1 << 3) | (1 << 4) | (1 << 5) | (1 << 8) | (1 << 9) | (1 << 11);

/// TCP sockets in `states` with their kernel cookies, IPv4 and IPv6.
fn dump(states: u32) -> io::Result<Vec<(TcpConn, [u8; 8])>> {
    dump_proto(libc::IPPROTO_TCP as u8, states)
}

/// Sockets of `proto` (TCP or UDP) in `states`, IPv4 and IPv6.
fn dump_proto(proto: u8, states: u32) -> io::Result<Vec<(TcpConn, [u8; 8])>> {
    let mut out = Vec::new();
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let nl = Netlink::open()?;
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16;
        nl.send(&request(
            SOCK_DIAG_BY_FAMILY,
            flags,
            family,
            proto,
            states,
            None,
        ))?;
        let mut buf = vec![0u8; 64 * 1024];
        'recv: loop {
            let n = nl.recv(&mut buf)?;
            let mut off = 0;
            while off + NLMSG_HDRLEN <= n {
                let len =
                    u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4])) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < NLMSG_HDRLEN || off + len > n {
                    break;
                }
                match kind {
                    NLMSG_DONE => break 'recv,
                    NLMSG_ERROR => {
                        let errno = i32::from_ne_bytes(
                            buf[off + 16..off + 20].try_into().unwrap_or([0; 4]),
                        );
                        if errno != 0 {
                            return Err(io::Error::from_raw_os_error(-errno));
                        }
                        break 'recv;
                    }
                    SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDRLEN + MSG_ID_END => {
                        let msg = &buf[off + NLMSG_HDRLEN..off + len];
                        let id = &msg[4..4 + 48];
                        if let Some(c) = parse_id(msg[0], id) {
                            let mut cookie = [0u8; 8];
                            cookie.copy_from_slice(&id[40..48]);
                            out.push((c, cookie));
                        }
                    }
                    _ => {}
                }
                off += (len + 3) & !3;
            }
        }
    }
    Ok(out)
}

/// Established TCP connections whose local port satisfies `want`, IPv4 and IPv6.
pub fn established(want: impl Fn(u16) -> bool) -> io::Result<Vec<TcpConn>> {
    Ok(dump(1 << TCP_ESTABLISHED)?
        .into_iter()
        .map(|(c, _)| c)
        .filter(|c| want(c.local.port()))
        .collect())
}

/// Listening TCP sockets (IPv4 and IPv6, wildcard binds included) whose port satisfies `want`.
pub fn listening(want: impl Fn(u16) -> bool) -> io::Result<Vec<SocketAddr>> {
    const TCP_LISTEN: u32 = 10;
    Ok(dump(1 << TCP_LISTEN)?
        .into_iter()
        .map(|(c, _)| c.local)
        .filter(|a| want(a.port()))
        .collect())
}

/// Bound, unconnected UDP sockets (the UDP form of listening; the kernel reports them in
/// TCP_CLOSE) whose port satisfies `want`, IPv4 and IPv6.
pub fn listening_udp(want: impl Fn(u16) -> bool) -> io::Result<Vec<SocketAddr>> {
    const UDP_UNCONNECTED: u32 = 7;
    Ok(dump_proto(libc::IPPROTO_UDP as u8, 1 << UDP_UNCONNECTED)?
        .into_iter()
        .map(|(c, _)| c.local)
        .filter(|a| a.port() != 0 && want(a.port()))
        .collect())
}

/// Destroys the local sockets of `conns` (their peers see a reset) and returns how many were
/// found. Each socket is named by its kernel cookie, taken from a dump of connected sockets:
/// a lookup by address alone falls back to the LISTENING socket when the connection is
/// already gone, and destroying that would take the service down.
pub fn destroy(conns: &[TcpConn]) -> io::Result<usize> {
    if conns.is_empty() {
        return Ok(0);
    }
    let want: std::collections::HashSet<&TcpConn> = conns.iter().collect();
    let mut n = 0;
    for (c, cookie) in dump(CONNECTED_STATES)? {
        if !want.contains(&c) {
            continue;
        }
        let family = if c.local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        let nl = Netlink::open()?;
        let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
        nl.send(&request(
            SOCK_DESTROY,
            flags,
            family,
            libc::IPPROTO_TCP as u8,
            CONNECTED_STATES,
            Some((&c, cookie)),
        ))?;
        let mut buf = [0u8; 512];
        let got = nl.recv(&mut buf)?;
        if got >= NLMSG_HDRLEN + 4 && u16::from_ne_bytes([buf[4], buf[5]]) == NLMSG_ERROR {
            let errno = i32::from_ne_bytes(buf[16..20].try_into().unwrap_or([0; 4]));
            match -errno {
                0 => n += 1,
                // Gone in the meantime, or the cookie no longer matches: nothing to close.
                libc::ENOENT | libc::ESTALE => {}
                e => return Err(io::Error::from_raw_os_error(e)),
            }
        }
    }
    Ok(n)
}
