//! A UDP prober between two namespaces: the client sends a datagram to a protected port every
//! ~100 µs; the server records when datagrams arrive. "The door is open" is the first datagram
//! after the prober was armed; "shut" is 30 ms without any.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Prober {
    last_rx: Arc<AtomicU64>,
    /// First arrival since `arm` (0: none yet).
    first_rx: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    epoch: Instant,
}

impl Prober {
    /// Server bound to `port` in namespace `server_ns`; client in `client_ns` sending to `to`.
    pub fn start(client_ns: &Path, server_ns: &Path, to: IpAddr, port: u16) -> Prober {
        let epoch = Instant::now();
        let last_rx = Arc::new(AtomicU64::new(0));
        let first_rx = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (server, client) = sockets(client_ns, server_ns, to, port, false);
        {
            let (last, first, stop) = (last_rx.clone(), first_rx.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if server.recv(&mut buf).is_ok() {
                        let t = (epoch.elapsed().as_nanos() as u64).max(1);
                        last.store(t, Ordering::Relaxed);
                        let _ = first.compare_exchange(0, t, Ordering::Relaxed, Ordering::Relaxed);
                    }
                }
            });
        }
        {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let to = SocketAddr::new(to, port);
                while !stop.load(Ordering::Relaxed) {
                    let _ = client.send_to(b"probe", to);
                    std::thread::sleep(Duration::from_micros(100));
                }
            });
        }
        Prober {
            last_rx,
            first_rx,
            stop,
            epoch,
        }
    }

    /// ns since the prober started (the clock of every figure it returns).
    pub fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Waits until nothing has arrived for 30 ms (the door is shut) and returns the arrival
    /// time of the last datagram that did.
    pub fn wait_closed(&self) -> u64 {
        let limit = Instant::now() + Duration::from_secs(5);
        while Instant::now() < limit {
            let last = self.last_rx.load(Ordering::Relaxed);
            if self.now().saturating_sub(last) > 30_000_000 {
                return last;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("probe traffic still arrives: the grant was not removed");
    }

    /// Forgets earlier arrivals: the next one is "first". Call with the door shut.
    pub fn arm(&self) {
        self.first_rx.store(0, Ordering::Relaxed);
    }

    /// Time of the first datagram since `arm` (waits up to 5 s for it).
    pub fn wait_first(&self) -> u64 {
        let limit = Instant::now() + Duration::from_secs(5);
        loop {
            let f = self.first_rx.load(Ordering::Relaxed);
            if f != 0 {
                return f;
            }
            assert!(
                Instant::now() < limit,
                "no packet admitted within 5 s of the grant"
            );
            std::hint::spin_loop();
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// A server socket in `server_ns` on `to:port` (on the wildcard address unless `exact`) and an
/// unconnected client socket in `client_ns`.
fn sockets(
    client_ns: &Path,
    server_ns: &Path,
    to: IpAddr,
    port: u16,
    exact: bool,
) -> (UdpSocket, UdpSocket) {
    let any = match to {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    };
    let local = if exact { to } else { any };
    let server = jitgate_agent::netns::run_in(server_ns, move || {
        UdpSocket::bind(SocketAddr::new(local, port))
    })
    .expect("netns")
    .expect("bind the probe server");
    server
        .set_read_timeout(Some(Duration::from_millis(50)))
        .ok();
    let client =
        jitgate_agent::netns::run_in(client_ns, move || UdpSocket::bind(SocketAddr::new(any, 0)))
            .expect("netns")
            .expect("bind the probe client");
    (server, client)
}

/// A stamped UDP stream: each datagram carries its send time (ns since `epoch`), so a verdict
/// can be judged by when the packet met the XDP program, whatever delays the receiver.
pub struct Stream {
    sent: Arc<std::sync::Mutex<Vec<u64>>>,
    received: Arc<std::sync::Mutex<Vec<u64>>>,
    stop: Arc<AtomicBool>,
}

impl Stream {
    /// Sends to `to:port` every `every` from `client_ns`; a server in `server_ns` records.
    pub fn start(
        client_ns: &Path,
        server_ns: &Path,
        to: IpAddr,
        port: u16,
        every: Duration,
        epoch: Instant,
    ) -> Stream {
        let (server, client) = sockets(client_ns, server_ns, to, port, true);
        let s = Stream {
            sent: Arc::default(),
            received: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (rx, stop) = (s.received.clone(), s.stop.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok(8) = server.recv(&mut buf) {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&buf[..8]);
                    rx.lock().expect("lock").push(u64::from_be_bytes(b));
                }
            }
        });
        let (tx, stop) = (s.sent.clone(), s.stop.clone());
        std::thread::spawn(move || {
            let to = SocketAddr::new(to, port);
            while !stop.load(Ordering::Relaxed) {
                let t = epoch.elapsed().as_nanos() as u64;
                if client.send_to(&t.to_be_bytes(), to).is_ok() {
                    tx.lock().expect("lock").push(t);
                }
                std::thread::sleep(every);
            }
        });
        s
    }

    /// Send stamps of the datagrams sent and of those received, so far.
    pub fn stamps(&self) -> (Vec<u64>, Vec<u64>) {
        (
            self.sent.lock().expect("lock").clone(),
            self.received.lock().expect("lock").clone(),
        )
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The `p` quantile of sorted samples.
pub fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
