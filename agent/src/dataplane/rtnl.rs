//! The XDP attachment of an interface through rtnetlink (`IFLA_XDP`): which program is
//! attached, in which mode, and attaching one with the flags libxdp's protocol uses
//! (`XDP_FLAGS_UPDATE_IF_NOEXIST` for a first dispatcher, `XDP_FLAGS_REPLACE` with the
//! expected old program to swap dispatchers atomically). aya attaches through bpf_link, which
//! other loaders cannot replace; the dispatcher protocol needs these netlink attachments.
//! Runs in the calling thread's network namespace.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLA_F_NESTED: u16 = 1 << 15;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_DRV_PROG_ID: u16 = 5;
const IFLA_XDP_SKB_PROG_ID: u16 = 6;
const IFLA_XDP_EXPECTED_FD: u16 = 8;

pub const XDP_FLAGS_UPDATE_IF_NOEXIST: u32 = 1;
pub const XDP_FLAGS_SKB_MODE: u32 = 2;
pub const XDP_FLAGS_DRV_MODE: u32 = 4;
pub const XDP_FLAGS_REPLACE: u32 = 16;

/// What the interface's XDP hook holds (the hardware-offload slot is not used here).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpState {
    /// Program in the driver (native) slot.
    pub drv: u32,
    /// Program in the generic (skb) slot.
    pub skb: u32,
}

impl XdpState {
    /// The program that sees the packets first, and whether it runs in the driver.
    pub fn main(&self) -> Option<(u32, bool)> {
        if self.drv != 0 {
            Some((self.drv, true))
        } else if self.skb != 0 {
            Some((self.skb, false))
        } else {
            None
        }
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket creation; the fd is owned at once.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// A request: header, ifinfomsg for `ifindex`, then `attrs`.
fn request(kind: u16, flags: u16, ifindex: u32, attrs: &[u8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(32 + attrs.len());
    let len = 16 + 16 + attrs.len();
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&1u32.to_ne_bytes()); // seq
    b.extend_from_slice(&0u32.to_ne_bytes()); // pid
    // ifinfomsg: family, pad, type, index, flags, change
    b.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    b.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(attrs);
    b
}

fn send(sock: &OwnedFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: a zeroed sockaddr_nl addressed to the kernel.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    // SAFETY: valid buffer and address for the call's duration.
    let r = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads replies until one of `kind` (returned) or an error/ack.
fn recv(sock: &OwnedFd, kind: u16) -> io::Result<Option<Vec<u8>>> {
    let mut buf = vec![0u8; 65536];
    loop {
        // SAFETY: a buffer we own, with its length.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut off = 0usize;
        let n = n as usize;
        while off + 16 <= n {
            let len =
                u32::from_ne_bytes([buf[off], buf[off + 1], buf[off + 2], buf[off + 3]]) as usize;
            let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
            if len < 16 || off + len > n {
                return Err(io::Error::other("truncated netlink reply"));
            }
            match ty {
                NLMSG_ERROR => {
                    let code = i32::from_ne_bytes([
                        buf[off + 16],
                        buf[off + 17],
                        buf[off + 18],
                        buf[off + 19],
                    ]);
                    return if code == 0 {
                        Ok(None)
                    } else {
                        Err(io::Error::from_raw_os_error(-code))
                    };
                }
                NLMSG_DONE => return Ok(None),
                t if t == kind => return Ok(Some(buf[off + 16..off + len].to_vec())),
                _ => {}
            }
            off += (len + 3) & !3;
        }
    }
}

/// Iterates the attributes in `b`: (kind without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & !NLA_F_NESTED;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[((len + 3) & !3).min(b.len())..];
        Some((kind, payload))
    })
}

fn u32_of(p: &[u8]) -> u32 {
    p.get(..4)
        .map_or(0, |b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The XDP programs attached to `ifindex`.
pub fn query(ifindex: u32) -> io::Result<XdpState> {
    let sock = socket()?;
    send(&sock, &request(RTM_GETLINK, NLM_F_REQUEST, ifindex, &[]))?;
    let Some(msg) = recv(&sock, RTM_NEWLINK)? else {
        return Err(io::Error::other("no link in the netlink reply"));
    };
    let mut st = XdpState::default();
    // ifinfomsg is 16 bytes; attributes follow.
    for (kind, payload) in attrs(msg.get(16..).unwrap_or(&[])) {
        if kind != IFLA_XDP {
            continue;
        }
        let mut attached = 0u8;
        for (k, p) in attrs(payload) {
            match k {
                IFLA_XDP_ATTACHED => attached = p.first().copied().unwrap_or(0),
                IFLA_XDP_DRV_PROG_ID => st.drv = u32_of(p),
                IFLA_XDP_SKB_PROG_ID => st.skb = u32_of(p),
                // With one program, only IFLA_XDP_PROG_ID may be sent: mode from ATTACHED.
                4 => match attached {
                    1 => st.drv = u32_of(p),
                    2 => st.skb = u32_of(p),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(st)
}

/// Attaches `prog` to `ifindex` with `flags`; `expected` is the program it must replace
/// (with `XDP_FLAGS_REPLACE`). `None` as `prog` detaches.
pub fn attach(
    ifindex: u32,
    prog: Option<BorrowedFd<'_>>,
    flags: u32,
    expected: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let mut nested = Vec::new();
    let fd = prog.map_or(-1, |f| f.as_raw_fd());
    push_attr(&mut nested, IFLA_XDP_FD, &fd.to_ne_bytes());
    push_attr(&mut nested, IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    if let Some(e) = expected {
        push_attr(
            &mut nested,
            IFLA_XDP_EXPECTED_FD,
            &e.as_raw_fd().to_ne_bytes(),
        );
    }
    let mut a = Vec::new();
    push_attr(&mut a, IFLA_XDP | NLA_F_NESTED, &nested);
    let sock = socket()?;
    send(
        &sock,
        &request(RTM_SETLINK, NLM_F_REQUEST | NLM_F_ACK, ifindex, &a),
    )?;
    recv(&sock, 0).map(|_| ())
}
