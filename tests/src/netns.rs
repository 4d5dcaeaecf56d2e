//! A small lab of network namespaces: one "vm" and one or more "clients", each client joined
//! to the vm by its own veth pair, IPv4 and IPv6 from the documentation ranges. Everything
//! is deleted when the `Lab` is dropped, including after a failed assertion.

use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `ip` with its arguments in one string (no argument contains a space).
pub fn ips(args: &str) -> io::Result<()> {
    ip(&args.split_whitespace().collect::<Vec<_>>())
}

/// New interfaces in `ns` skip IPv6 duplicate address detection: otherwise their link-local
/// addresses stay tentative for seconds and neighbour discovery cannot complete.
fn no_dad(ns: &str) -> io::Result<()> {
    for key in [
        "net.ipv6.conf.default.accept_dad=0",
        "net.ipv6.conf.all.accept_dad=0",
    ] {
        let out = Command::new("ip")
            .args(["netns", "exec", ns, "sysctl", "-qw", key])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "sysctl {key} in {ns}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
    }
    Ok(())
}

/// One client namespace and its link to the vm.
#[derive(Clone, Debug)]
pub struct Client {
    pub ns: String,
    /// The vm-side interface (where the XDP program attaches).
    pub vm_iface: String,
    pub vm_v4: IpAddr,
    pub vm_v6: IpAddr,
    pub v4: IpAddr,
    pub v6: IpAddr,
}

pub struct Lab {
    pub vm: String,
    pub clients: Vec<Client>,
}

/// Address plan per client index: (vm v4, client v4, vm v6, client v6, v4 prefix len).
fn plan(i: usize) -> (String, String, String, String) {
    match i {
        0 => (
            "198.51.100.1".into(),
            "198.51.100.2".into(),
            "2001:db8:1::1".into(),
            "2001:db8:1::2".into(),
        ),
        1 => (
            "203.0.113.1".into(),
            "203.0.113.2".into(),
            "2001:db8:2::1".into(),
            "2001:db8:2::2".into(),
        ),
        n => (
            format!("198.51.100.{}", 1 + 4 * n),
            format!("198.51.100.{}", 2 + 4 * n),
            format!("2001:db8:{}::1", n + 1),
            format!("2001:db8:{}::2", n + 1),
        ),
    }
}

impl Lab {
    /// A vm and `clients` clients (at most two keep disjoint /24s: 198.51.100.0/24 and
    /// 203.0.113.0/24).
    pub fn new(clients: usize) -> io::Result<Lab> {
        let tag = crate::unique("");
        let mut lab = Lab {
            vm: format!("jgvm{tag}"),
            clients: Vec::new(),
        };
        ip(&["netns", "add", &lab.vm])?;
        no_dad(&lab.vm)?;
        ip(&["-n", &lab.vm, "link", "set", "lo", "up"])?;
        for i in 0..clients {
            let ns = format!("jgc{i}{tag}");
            ip(&["netns", "add", &ns])?;
            // Record it at once so Drop removes it even if a later step fails.
            let (vm4, c4, vm6, c6) = plan(i);
            let vm_iface = format!("vm{i}");
            lab.clients.push(Client {
                ns: ns.clone(),
                vm_iface: vm_iface.clone(),
                vm_v4: vm4.parse().map_err(io::Error::other)?,
                vm_v6: vm6.parse().map_err(io::Error::other)?,
                v4: c4.parse().map_err(io::Error::other)?,
                v6: c6.parse().map_err(io::Error::other)?,
            });
            no_dad(&ns)?;
            let len4 = if i < 2 { "24" } else { "30" };
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let (cmac, vmac) = (
                format!("02:00:00:00:{i:02x}:02"),
                format!("02:00:00:00:{i:02x}:01"),
            );
            ip(&[
                "-n", &ns, "link", "add", "eth0", "address", &cmac, "type", "veth", "peer", "name",
                &vm_iface, "address", &vmac, "netns", &lab.vm,
            ])?;
            ips(&format!("-n {ns} addr add {c4}/{len4} dev eth0"))?;
            ips(&format!("-n {ns} addr add {c6}/64 dev eth0 nodad"))?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            let vm = &lab.vm;
            ips(&format!("-n {vm} addr add {vm4}/{len4} dev {vm_iface}"))?;
            ips(&format!("-n {vm} addr add {vm6}/64 dev {vm_iface} nodad"))?;
            ip(&["-n", &lab.vm, "link", "set", &vm_iface, "up"])?;
            // Static neighbours: no ARP/NDP round trips to time out on a busy machine.
            for (addr, mac, dev, nsn) in [
                (&c4, &cmac, vm_iface.as_str(), &lab.vm),
                (&c6, &cmac, vm_iface.as_str(), &lab.vm),
                (&vm4, &vmac, "eth0", &ns),
                (&vm6, &vmac, "eth0", &ns),
            ] {
                ip(&[
                    "-n",
                    nsn,
                    "neigh",
                    "replace",
                    addr,
                    "lladdr",
                    mac,
                    "dev",
                    dev,
                    "nud",
                    "permanent",
                ])?;
            }
        }
        Ok(lab)
    }

    pub fn vm_path(&self) -> PathBuf {
        ns_path(&self.vm)
    }

    pub fn client_path(&self, i: usize) -> PathBuf {
        ns_path(&self.clients[i].ns)
    }

    /// Adds another address to client `i` (to act as a second source).
    pub fn add_client_addr(&self, i: usize, cidr: &str) -> io::Result<()> {
        let nodad: &[&str] = if cidr.contains(':') { &["nodad"] } else { &[] };
        let mut args = vec![
            "-n",
            &self.clients[i].ns,
            "addr",
            "add",
            cidr,
            "dev",
            "eth0",
        ];
        args.extend_from_slice(nodad);
        ip(&args)
    }

    /// A TCP listener in the vm on all addresses, accepting and holding connections open
    /// (echoing what it reads) on a background thread.
    pub fn tcp_server(&self, port: u16, v6: bool) -> io::Result<()> {
        tcp_server_in(&self.vm_path(), port, v6)
    }

    /// A UDP echo server in the vm.
    pub fn udp_server(&self, port: u16, v6: bool) -> io::Result<()> {
        let addr: SocketAddr = if v6 {
            SocketAddr::from(([0u16; 8], port))
        } else {
            SocketAddr::from(([0u8; 4], port))
        };
        let sock = jitgate_agent::netns::run_in(&self.vm_path(), move || UdpSocket::bind(addr))??;
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        });
        Ok(())
    }

    /// Whether client `i` can open a TCP connection to `dst` (optionally from `src`) within
    /// `timeout`. A dropped SYN shows as a timeout.
    pub fn tcp_connects(
        &self,
        i: usize,
        src: Option<IpAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> bool {
        self.tcp_connect(i, src, dst, timeout).is_ok()
    }

    pub fn tcp_connect(
        &self,
        i: usize,
        src: Option<IpAddr>,
        dst: SocketAddr,
        timeout: Duration,
    ) -> io::Result<TcpStream> {
        jitgate_agent::netns::run_in(&self.client_path(i), move || {
            connect_from(src, dst, timeout)
        })?
    }

    /// Whether a UDP datagram from client `i` to `dst` is echoed within `timeout`.
    pub fn udp_echoes(&self, i: usize, dst: SocketAddr, timeout: Duration) -> bool {
        jitgate_agent::netns::run_in(&self.client_path(i), move || -> io::Result<bool> {
            let bind: SocketAddr = if dst.is_ipv6() {
                SocketAddr::from(([0u16; 8], 0))
            } else {
                SocketAddr::from(([0u8; 4], 0))
            };
            let s = UdpSocket::bind(bind)?;
            s.set_read_timeout(Some(timeout))?;
            s.send_to(b"ping", dst)?;
            let mut buf = [0u8; 16];
            Ok(matches!(s.recv_from(&mut buf), Ok((4, _))))
        })
        .ok()
        .and_then(Result::ok)
        .unwrap_or(false)
    }
}

fn echo(mut s: TcpStream) {
    use std::io::{Read, Write};
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if s.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A TCP listener in namespace `ns` (a path under /run/netns) on all addresses, accepting and
/// holding connections open (echoing what it reads) on a background thread.
pub fn tcp_server_in(ns: &Path, port: u16, v6: bool) -> io::Result<()> {
    let addr: SocketAddr = if v6 {
        SocketAddr::from(([0u16; 8], port))
    } else {
        SocketAddr::from(([0u8; 4], port))
    };
    let listener = jitgate_agent::netns::run_in(ns, move || TcpListener::bind(addr))??;
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || echo(s));
        }
    });
    Ok(())
}

/// Whether a TCP connection from namespace `ns` to `dst` opens within `timeout` (a dropped
/// SYN shows as a timeout).
pub fn tcp_connects_in(ns: &Path, dst: SocketAddr, timeout: Duration) -> bool {
    jitgate_agent::netns::run_in(ns, move || connect_from(None, dst, timeout))
        .map(|r| r.is_ok())
        .unwrap_or(false)
}

fn connect_from(src: Option<IpAddr>, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let Some(src) = src else {
        return TcpStream::connect_timeout(&dst, timeout);
    };
    let domain = if dst.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket(2); the fd is owned by the TcpStream below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: fd is a fresh, valid socket.
    let stream = unsafe { TcpStream::from_raw_fd(fd) };
    let bind = nix::sys::socket::SockaddrStorage::from(SocketAddr::new(src, 0));
    nix::sys::socket::bind(fd, &bind).map_err(io::Error::from)?;
    // Connect with a timeout: non-blocking connect, then poll for writability.
    stream.set_nonblocking(true)?;
    let target = nix::sys::socket::SockaddrStorage::from(dst);
    match nix::sys::socket::connect(fd, &target) {
        Ok(()) => {}
        Err(nix::errno::Errno::EINPROGRESS) => {
            let mut pfd = [libc::pollfd {
                fd,
                events: libc::POLLOUT,
                revents: 0,
            }];
            // SAFETY: one valid pollfd.
            let n = unsafe { libc::poll(pfd.as_mut_ptr(), 1, timeout.as_millis() as i32) };
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
            }
            if let Some(e) = stream.take_error()? {
                return Err(e);
            }
        }
        Err(e) => return Err(e.into()),
    }
    stream.set_nonblocking(false)?;
    Ok(stream)
}

fn ns_path(name: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(name)
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &self.clients {
            let _ = ip(&["netns", "del", &c.ns]);
        }
        let _ = ip(&["netns", "del", &self.vm]);
    }
}
