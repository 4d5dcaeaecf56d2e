//! `flood`: a SYN flood against four receivers on one veth, in turn, in the same run.
//!
//! Method (why the numbers mean what they say): over veth the sender and the receive path
//! share the machine's CPUs, and the receive work for a frame runs in softirq on the CPU that
//! sent it (veth's NAPI or the per-CPU backlog, raised from the sender's own `sendmmsg`). So
//! the generator is pinned to one CPU (the "flood CPU") and sends flat out for a fixed time;
//! all the work a frame causes, sending and receiving, is kernel time on that CPU. Kernel time
//! (system + irq + softirq from /proc/stat, which includes ksoftirqd) divided by the frames
//! the receiver took gives the total cost per frame. The same run also measures a receiver that
//! drops everything in XDP without looking at the frame (`jitgate_drop`): its cost is the
//! sender plus the cheapest possible receive. Each receiver's cost minus that floor is its
//! receive-side cost per dropped packet: for an XDP receiver the program's own work, for
//! nftables and iptables the stack up to their hook plus the rule evaluation.
//!
//! The granted client runs in the same namespace as the generator, so its SYNs share the
//! receiver's veth queue with the flood, and on the same CPU, as SCHED_FIFO so that what it
//! measures is the receive path, not the scheduler's time slice of the flooding thread.

use jitgate_agent::{BootInstant, Dataplane, DataplaneOptions, GrantId, GrantSpec, MapLimits};
use jitgate_common::{Counter, Port, Protocol, SourcePrefix, programs};
use jitgate_tests::flood::{self, FloodStats, Link, PacketSocket, rules};
use jitgate_tests::netns::Lab;
use jitgate_tests::{PinGuard, TEST_PIN_ROOT, unique};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// The CPU the generator and the granted client run on, and so (veth) the receive path too.
fn flood_cpu() -> usize {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) > 1 {
        1
    } else {
        0
    }
}

/// The vm's accept loop runs on CPU 0: accepting is the application's work, not the receive
/// path's.
const APP_CPU: usize = 0;

fn pin_thread(cpu: usize) -> Result<(), String> {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).map_err(|e| e.to_string())?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .map_err(|e| format!("pin to CPU {cpu}: {e}"))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Receiver {
    Floor,
    SkbFloor,
    Jitgate,
    /// jitgate with its denial prefilter off: every denial looks the maps up, as layout 1 did.
    JitgateNoPrefilter,
    NftInet,
    NftNetdev,
    Iptables,
}

/// Above this many grants per family only the XDP receivers run: loading a million elements
/// into nftables sets takes minutes, and iptables at 10 000 rules already does 6 000 frames/s.
const NETFILTER_MAX_GRANTS: u32 = 10_000;

impl Receiver {
    const ALL: [Receiver; 7] = [
        Receiver::Floor,
        Receiver::SkbFloor,
        Receiver::Jitgate,
        Receiver::JitgateNoPrefilter,
        Receiver::NftInet,
        Receiver::NftNetdev,
        Receiver::Iptables,
    ];

    /// The receivers measured at `grants` grants per family.
    fn at(grants: u32) -> Vec<Receiver> {
        Self::ALL
            .into_iter()
            .filter(|r| grants <= NETFILTER_MAX_GRANTS || r.is_xdp())
            .collect()
    }

    fn is_xdp(self) -> bool {
        matches!(
            self,
            Receiver::Floor | Receiver::Jitgate | Receiver::JitgateNoPrefilter
        )
    }

    /// Drops everything, the granted client included.
    fn is_floor(self) -> bool {
        matches!(self, Receiver::Floor | Receiver::SkbFloor)
    }

    /// The floor a receiver's decision cost is measured above: the same path, no decision.
    fn floor(self) -> Receiver {
        match self {
            Receiver::Floor | Receiver::Jitgate | Receiver::JitgateNoPrefilter => Receiver::Floor,
            _ => Receiver::SkbFloor,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Receiver::Floor => "XDP floor: drop everything (`jitgate_drop`)",
            Receiver::SkbFloor => "skb floor: nft netdev ingress, drop everything",
            Receiver::Jitgate => "(1) jitgate XDP",
            Receiver::JitgateNoPrefilter => {
                "(1′) jitgate XDP, prefilter off (every denial looks the maps up)"
            }
            Receiver::NftInet => "(2) nftables inet input, concat set",
            Receiver::NftNetdev => "(3) nftables netdev ingress, concat set",
            Receiver::Iptables => "(4) iptables/ip6tables, rule per grant",
        }
    }
}

/// Kernel and user ticks of one CPU from /proc/stat.
#[derive(Clone, Copy, Default)]
struct CpuTicks {
    kernel: u64,
    user: u64,
    total: u64,
}

fn cpu_ticks(cpu: usize) -> CpuTicks {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let tag = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&tag)) else {
        return CpuTicks::default();
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    CpuTicks {
        kernel: g(2) + g(5) + g(6),
        user: g(0) + g(1),
        total: (0..8).map(g).sum(),
    }
}

/// The kernel thread that runs this CPU's softirqs when they are deferred.
fn ksoftirqd(cpu: usize) -> Option<PathBuf> {
    let name = format!("ksoftirqd/{cpu}");
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_to_string(p.join("comm")).is_ok_and(|c| c.trim() == name))
}

/// A task's time on CPU in ns (first field of schedstat; 0 if unreadable).
fn schedstat_ns(task: Option<&Path>) -> u64 {
    task.and_then(|p| std::fs::read_to_string(p.join("schedstat")).ok())
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// The calling thread's CPU time in ns.
fn thread_cpu_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

fn in_ns(ns: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns])
        .args(args)
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Percentile of sorted samples (nearest rank).
fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1].as_secs_f64() * 1e6
}

/// Connect latencies of the granted client, with each sample's start.
#[derive(Default)]
struct Latencies {
    samples: Vec<(Instant, Duration)>,
    failures: u64,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const CONNECT_GAP: Duration = Duration::from_millis(2);

/// The granted client: opens and resets one TCP connection to port 22 every ~2 ms until
/// `stop`, on the flood CPU at SCHED_FIFO priority 1 (so the flooding thread beside it
/// cannot delay it by more than a preemption point: what it measures is the receive path, not
/// the scheduler's time slices).
fn client_loop(ns: PathBuf, dst: SocketAddr, stop: Arc<AtomicBool>) -> std::io::Result<Latencies> {
    jitgate_agent::netns::run_in(&ns, move || {
        let _ = pin_thread(flood_cpu());
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: valid param for the calling thread. Failure leaves it at normal priority.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        let mut l = Latencies::default();
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            match TcpStream::connect_timeout(&dst, CONNECT_TIMEOUT) {
                Ok(s) => {
                    l.samples.push((t, t.elapsed()));
                    // Reset rather than close: no TIME_WAIT pile-up over thousands of rounds.
                    let _ = nix::sys::socket::setsockopt(
                        &s,
                        nix::sys::socket::sockopt::Linger,
                        &libc::linger {
                            l_onoff: 1,
                            l_linger: 0,
                        },
                    );
                }
                Err(_) => {
                    // A failed connect counts as what it cost (the timeout, typically).
                    l.samples.push((t, t.elapsed()));
                    l.failures += 1;
                }
            }
            std::thread::sleep(CONNECT_GAP);
        }
        l
    })
}

/// One flood window's measurements.
struct Window {
    stats: FloodStats,
    /// CPU time of the sender thread and of ksoftirqd on the flood CPU.
    cost_ns: f64,
    /// Kernel share of the flood CPU (/proc/stat), to show it was busy with the flood.
    kernel_share: f64,
    /// User share of the flood CPU: other processes on the machine.
    other_user_pct: f64,
    dropped: Option<u64>,
    flood: Latencies,
}

struct Rig {
    lab: Lab,
    link: Link,
    frames: Vec<Vec<u8>>,
    dst: SocketAddr,
    dir: tempfile::TempDir,
    dp: Dataplane,
    _pins: PinGuard,
    floor: Option<aya::Ebpf>,
    grants: Vec<IpAddr>,
    flood_for: Duration,
    idle_for: Duration,
}

impl Rig {
    fn vm(&self) -> String {
        self.lab.vm.clone()
    }

    fn iface(&self) -> String {
        self.lab.clients[0].vm_iface.clone()
    }

    /// Writes grants (the client, and `others` idle addresses per family) into every receiver's
    /// form: the data-plane maps now, the rule files for later loads.
    fn set_grants(&mut self, others: u32) -> Result<(), String> {
        let c = &self.lab.clients[0];
        let mut grants = vec![c.v4, c.v6];
        for i in 0..others {
            grants.push(flood::idle_grant(false, i));
            grants.push(flood::idle_grant(true, i));
        }
        let end = BootInstant::now().saturating_add(Duration::from_secs(4 * 3600));
        let port = Port::new(22).ok_or("port 22")?;
        for a in &grants[self.grants.len()..] {
            let spec = GrantSpec {
                protocol: Protocol::Tcp,
                port,
                source: SourcePrefix::host(*a),
            };
            self.dp
                .add_grant(GrantId::random(), spec, end)
                .map_err(|e| format!("add grant {a}: {e}"))?;
        }
        self.grants = grants;
        if others + 1 > NETFILTER_MAX_GRANTS {
            return Ok(());
        }
        let grants = &self.grants;
        // iptables order: idle grants first, the client's rule last (its worst case).
        let mut ordered: Vec<IpAddr> = grants[2..].to_vec();
        ordered.extend_from_slice(&grants[..2]);
        let d = self.dir.path();
        let w = |name: &str, body: String| {
            std::fs::write(d.join(name), body).map_err(|e| format!("write {name}: {e}"))
        };
        w("nft-inet.nft", rules::nft_inet(&ordered))?;
        w("nft-netdev.nft", rules::nft_netdev(&ordered, &self.iface()))?;
        w(
            "nft-netdev-drop-all.nft",
            rules::nft_drop_all(&self.iface()),
        )?;
        w("iptables.rules", rules::iptables(&ordered, false))?;
        w("ip6tables.rules", rules::iptables(&ordered, true))?;
        Ok(())
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn install(&mut self, r: Receiver) -> Result<(), String> {
        let vm = self.vm();
        let iface = self.iface();
        match r {
            Receiver::Floor => {
                let mut ebpf = aya::EbpfLoader::new()
                    .default_map_pin_directory(self.dp.pin_dir())
                    .load(jitgate_agent::dataplane::PROGRAM_OBJECT)
                    .map_err(|e| format!("load floor: {e}"))?;
                let prog: &mut aya::programs::Xdp = ebpf
                    .program_mut(programs::FLOOR_DROP)
                    .ok_or("no floor program")?
                    .try_into()
                    .map_err(|e| format!("floor program: {e}"))?;
                prog.load().map_err(|e| format!("load floor: {e}"))?;
                let vm_path = self.lab.vm_path();
                jitgate_agent::netns::run_in(&vm_path, || {
                    prog.attach(&iface, aya::programs::XdpMode::Driver)
                        .or_else(|_| prog.attach(&iface, aya::programs::XdpMode::Skb))
                })
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("attach floor: {e}"))?;
                // Dropping the Ebpf detaches it.
                self.floor = Some(ebpf);
            }
            Receiver::Jitgate | Receiver::JitgateNoPrefilter => {
                let vm_path = self.lab.vm_path();
                let dp = &mut self.dp;
                dp.set_prefilter_enabled(r == Receiver::Jitgate);
                jitgate_agent::netns::run_in(&vm_path, || dp.attach(&iface))
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("attach jitgate: {e}"))?;
            }
            Receiver::SkbFloor => {
                in_ns(&vm, &["nft", "-f", &self.file("nft-netdev-drop-all.nft")])?;
            }
            Receiver::NftInet => {
                in_ns(&vm, &["nft", "-f", &self.file("nft-inet.nft")])?;
            }
            Receiver::NftNetdev => {
                in_ns(&vm, &["nft", "-f", &self.file("nft-netdev.nft")])?;
            }
            Receiver::Iptables => {
                in_ns(&vm, &["iptables-restore", &self.file("iptables.rules")])?;
                in_ns(&vm, &["ip6tables-restore", &self.file("ip6tables.rules")])?;
            }
        }
        Ok(())
    }

    fn uninstall(&mut self, r: Receiver) -> Result<(), String> {
        let vm = self.vm();
        match r {
            Receiver::Floor => self.floor = None,
            Receiver::Jitgate | Receiver::JitgateNoPrefilter => {
                let iface = self.iface();
                self.dp.detach(&iface).map_err(|e| format!("detach: {e}"))?;
                self.dp.set_prefilter_enabled(true);
            }
            Receiver::SkbFloor => {
                in_ns(
                    &vm,
                    &["nft", "delete", "table", "netdev", "jitgate_flood_floor"],
                )?;
            }
            Receiver::NftInet => {
                in_ns(&vm, &["nft", "delete", "table", "inet", "jitgate_flood"])?;
            }
            Receiver::NftNetdev => {
                in_ns(&vm, &["nft", "delete", "table", "netdev", "jitgate_flood"])?;
            }
            Receiver::Iptables => {
                in_ns(&vm, &["iptables", "-F", "INPUT"])?;
                in_ns(&vm, &["ip6tables", "-F", "INPUT"])?;
                // iptables-nft leaves its (now empty) tables hooked; remove them so they cost
                // nothing in the next receiver's run. Legacy iptables has none: ignore errors.
                let _ = in_ns(&vm, &["nft", "delete", "table", "ip", "filter"]);
                let _ = in_ns(&vm, &["nft", "delete", "table", "ip6", "filter"]);
            }
        }
        Ok(())
    }

    /// Packets the receiver itself counted as dropped so far (None for the floor).
    fn dropped(&self, r: Receiver) -> Option<u64> {
        let vm = self.vm();
        let counter_sum = |out: &str| -> u64 {
            out.split_whitespace()
                .collect::<Vec<_>>()
                .windows(2)
                .filter(|w| w[0] == "packets")
                .filter_map(|w| w[1].parse::<u64>().ok())
                .sum()
        };
        let ipt_drop = |cmd: &str| -> Option<u64> {
            let out = in_ns(&vm, &[cmd, "-L", "INPUT", "-v", "-x", "-n"]).ok()?;
            let last = out.lines().rev().find(|l| l.contains("DROP"))?;
            last.split_whitespace().next()?.parse().ok()
        };
        match r {
            Receiver::Floor => None,
            Receiver::SkbFloor => in_ns(
                &vm,
                &[
                    "nft",
                    "list",
                    "chain",
                    "netdev",
                    "jitgate_flood_floor",
                    "ingress",
                ],
            )
            .ok()
            .map(|o| counter_sum(&o)),
            Receiver::Jitgate | Receiver::JitgateNoPrefilter => self
                .dp
                .counters()
                .ok()
                .map(|c| c.get(Counter::DeniedNoGrant)),
            Receiver::NftInet => in_ns(
                &vm,
                &["nft", "list", "chain", "inet", "jitgate_flood", "input"],
            )
            .ok()
            .map(|o| counter_sum(&o)),
            Receiver::NftNetdev => in_ns(
                &vm,
                &["nft", "list", "chain", "netdev", "jitgate_flood", "ingress"],
            )
            .ok()
            .map(|o| counter_sum(&o)),
            Receiver::Iptables => Some(ipt_drop("iptables")? + ipt_drop("ip6tables")?),
        }
    }

    /// The client alone for `idle_for`.
    fn idle(&self) -> Result<Latencies, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, dst, s2) = (self.lab.client_path(0), self.dst, stop.clone());
        let h = std::thread::spawn(move || client_loop(ns, dst, s2));
        std::thread::sleep(self.idle_for);
        stop.store(true, Ordering::Relaxed);
        h.join()
            .map_err(|_| "client thread panicked".to_string())?
            .map_err(|e| e.to_string())
    }

    /// The flood for `flood_for`, with the client running (except for the floor, which drops
    /// the client too).
    fn flood(&self, r: Receiver) -> Result<Window, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let client = (!r.is_floor()).then(|| {
            let (ns, dst, s2) = (self.lab.client_path(0), self.dst, stop.clone());
            std::thread::spawn(move || client_loop(ns, dst, s2))
        });
        let before_drop = self.dropped(r);
        let cpu = flood_cpu();
        let soft = ksoftirqd(cpu);
        let (frames, dur) = (&self.frames, self.flood_for);
        let res = jitgate_agent::netns::run_in(&self.lab.client_path(0), || {
            pin_thread(cpu)?;
            let sock = PacketSocket::open("eth0").map_err(|e| format!("AF_PACKET: {e}"))?;
            let t0 = cpu_ticks(cpu);
            let (me0, soft0) = (thread_cpu_ns(), schedstat_ns(soft.as_deref()));
            let start = Instant::now();
            let st = flood::flood(&sock, frames, dur, u64::MAX).map_err(|e| e.to_string())?;
            let end = Instant::now();
            let (me1, soft1) = (thread_cpu_ns(), schedstat_ns(soft.as_deref()));
            let t1 = cpu_ticks(cpu);
            let cost = (me1 - me0) + soft1.saturating_sub(soft0);
            Ok::<_, String>((st, t0, t1, start, end, cost))
        })
        .map_err(|e| e.to_string())?;
        stop.store(true, Ordering::Relaxed);
        let mut lat = match client {
            Some(h) => h
                .join()
                .map_err(|_| "client thread panicked".to_string())?
                .map_err(|e| e.to_string())?,
            None => Latencies::default(),
        };
        let (stats, t0, t1, start, end, cost_ns) = res?;
        // Only connections begun inside the flood window count as "under flood".
        lat.samples.retain(|(t, _)| *t >= start && *t < end);
        let after_drop = self.dropped(r);
        let total = (t1.total - t0.total).max(1) as f64;
        Ok(Window {
            stats,
            cost_ns: cost_ns as f64,
            kernel_share: (t1.kernel - t0.kernel) as f64 / total,
            other_user_pct: 100.0 * (t1.user - t0.user) as f64 / total,
            dropped: match (before_drop, after_drop) {
                (Some(a), Some(b)) => Some(b.saturating_sub(a)),
                _ => None,
            },
            flood: lat,
        })
    }
}

/// Per receiver and grant level, over rounds.
#[derive(Default)]
struct Acc {
    ns_per_pkt: Vec<f64>,
    pps: Vec<f64>,
    sent: u64,
    refused: u64,
    dropped: Option<u64>,
    user_pct: f64,
    kernel_share: f64,
    idle: Vec<Duration>,
    flood: Vec<Duration>,
    idle_fail: u64,
    flood_fail: u64,
}

pub fn run(quick: bool) {
    if let Err(e) = run_inner(quick) {
        eprintln!("flood benchmark: {e}");
        std::process::exit(1);
    }
}

fn run_inner(quick: bool) -> Result<(), String> {
    let load_start = super::load_average();
    let lab = Lab::new(1).map_err(|e| format!("lab: {e}"))?;
    let c = lab.clients[0].clone();
    let (IpAddr::V4(dst_v4), IpAddr::V6(dst_v6)) = (c.vm_v4, c.vm_v6) else {
        return Err("lab address plan changed".into());
    };
    // MACs are fixed by the lab's plan for client 0.
    let link = Link {
        src_mac: [2, 0, 0, 0, 0, 2],
        dst_mac: [2, 0, 0, 0, 0, 1],
        dst_v4,
        dst_v6,
    };
    // The vm's port 22: accept and drop. Pinned away from the receive CPU: accepting is the
    // application's work, not the receive path's.
    let listener = jitgate_agent::netns::run_in(&lab.vm_path(), || {
        TcpListener::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, 22)))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("listen on 22: {e}"))?;
    std::thread::spawn(move || {
        let _ = pin_thread(APP_CPU);
        for s in listener.incoming() {
            drop(s);
        }
    });

    jitgate_agent::bpffs::ensure_pin_dir(Path::new(TEST_PIN_ROOT)).map_err(|e| e.to_string())?;
    let pin_dir = PathBuf::from(TEST_PIN_ROOT).join(unique("flood"));
    let mut opts = DataplaneOptions::new(&pin_dir);
    opts.limits = MapLimits {
        host_grants: 1 << 21,
        prefix_grants: 1 << 10,
        flows: 1 << 14,
    };
    let pins = PinGuard(pin_dir);
    let mut dp = Dataplane::open(&opts).map_err(|e| format!("open data plane: {e}"))?;
    dp.set_protected(&["22/tcp".parse().map_err(|_| "22/tcp")?])
        .map_err(|e| e.to_string())?;

    let mut rig = Rig {
        frames: flood::flood_frames(&link, 8192),
        link,
        dst: SocketAddr::from((dst_v4, 22)),
        lab,
        dir: tempfile::tempdir().map_err(|e| e.to_string())?,
        dp,
        _pins: pins,
        floor: None,
        grants: Vec::new(),
        flood_for: Duration::from_millis(if quick { 1000 } else { 3000 }),
        idle_for: Duration::from_millis(if quick { 300 } else { 1000 }),
    };
    let rounds = if quick { 1 } else { 3 };
    // Grants per family minus the client's own.
    let levels: &[u32] = if quick {
        &[0, 9_999]
    } else {
        &[0, 9_999, 999_999]
    };
    let mut results: Vec<(u32, Receiver, Acc)> = Vec::new();
    let started = Instant::now();
    for &others in levels {
        rig.set_grants(others)?;
        let receivers = Receiver::at(others + 1);
        let mut accs: Vec<Acc> = receivers
            .iter()
            .map(|_| Acc {
                kernel_share: 1.0,
                ..Acc::default()
            })
            .collect();
        for _ in 0..rounds {
            for (i, &r) in receivers.iter().enumerate() {
                rig.install(r)?;
                let out = (|| {
                    let idle = if r.is_floor() {
                        Latencies::default()
                    } else {
                        let l = rig.idle()?;
                        if l.samples.is_empty() {
                            return Err(format!("{}: the granted client cannot connect", r.name()));
                        }
                        l
                    };
                    let w = rig.flood(r)?;
                    Ok::<_, String>((idle, w))
                })();
                rig.uninstall(r)?;
                let (idle, w) = out?;
                let a = &mut accs[i];
                let sent = w.stats.sent.max(1) as f64;
                a.ns_per_pkt.push(w.cost_ns / sent);
                a.kernel_share = a.kernel_share.min(w.kernel_share);
                a.pps.push(sent / w.stats.elapsed.as_secs_f64());
                a.sent += w.stats.sent;
                a.refused += w.stats.refused;
                a.dropped = match (a.dropped, w.dropped) {
                    (x, None) => x,
                    (None, Some(d)) => Some(d),
                    (Some(x), Some(d)) => Some(x + d),
                };
                a.user_pct = a.user_pct.max(w.other_user_pct);
                a.idle.extend(idle.samples.iter().map(|s| s.1));
                a.idle_fail += idle.failures;
                a.flood.extend(w.flood.samples.iter().map(|s| s.1));
                a.flood_fail += w.flood.failures;
                eprintln!(
                    "{} grants/family, {}: {:.0} ns/packet, {:.2} Mpps, {} flood connects",
                    others + 1,
                    r.name(),
                    w.cost_ns / sent,
                    sent / w.stats.elapsed.as_secs_f64() / 1e6,
                    w.flood.samples.len()
                );
            }
        }
        for (r, a) in receivers.iter().zip(accs) {
            results.push((others + 1, *r, a));
        }
    }
    print!(
        "{}",
        report(&rig, &results, rounds, started.elapsed(), &load_start)
    );
    Ok(())
}

fn report(
    rig: &Rig,
    results: &[(u32, Receiver, Acc)],
    rounds: usize,
    took: Duration,
    load_start: &str,
) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ipt = Command::new("iptables")
        .arg("-V")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let nft = Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let mut out = String::new();
    out.push_str(&format!(
        "Measured {} on kernel {}, {} CPUs; {nft}; {ipt}. {} s per flood window, {rounds} round(s) per receiver and grant level, receivers interleaved; load average {load_start} at the start, {} at the end (other builds on both cores: the flood thread got a fraction of its CPU, see frames/s, while the per-frame CPU figures count only its own time); whole run {:.0} s.\n\n",
        super::chrono_date(),
        kernel.trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        rig.flood_for.as_secs_f64(),
        super::load_average(),
        took.as_secs_f64()
    ));
    out.push_str(&format!(
        "Flood: TCP SYNs to port 22 from {} distinct sources (half 198.18.0.0/16, half 2001:db8:ffff::/48), valid checksums, `sendmmsg` of {} frames on AF_PACKET from a thread pinned to CPU {fc}, flat out. \
         Granted client: {} → {}:22, a new connection every ~2 ms (reset after connect; a failed connect counts as its duration, ~1 s timeout), same namespace and veth as the flood, pinned to CPU {fc} as well at SCHED_FIFO 1. \
         Grants: the client (IPv4 and IPv6) plus N−1 idle addresses per family (198.19.0.0/16, 2001:db8:eeee::/48), in jitgate's maps, in both nftables sets, and as iptables rules (client last).\n\n",
        rig.frames.len(),
        flood::BATCH,
        rig.lab.clients[0].v4,
        rig.link.dst_v4,
        fc = flood_cpu(),
    ));
    out.push_str("| grants / family | receiver | flood CPU ns / frame | spread over rounds | receive-side ns / dropped packet (− XDP floor) | × ours | decision ns (− own floor) | × ours | frames / s | dropped by receiver / taken | client connect p50 / p99 idle (µs) | p50 / p99 under flood (µs) | p99 flood / idle | connect failures (idle/flood) |\n|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let median_pps = |v: &[f64]| {
        let mut s = v.to_vec();
        s.sort_by(f64::total_cmp);
        s.get(s.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let mut verdicts = Vec::new();
    let mut notes = Vec::new();
    let mut max_user = 0.0f64;
    let mut min_kernel = 1.0f64;
    for level in results
        .iter()
        .map(|r| r.0)
        .collect::<std::collections::BTreeSet<_>>()
    {
        let get = |r: Receiver| results.iter().find(|x| x.0 == level && x.1 == r);
        let cost = |r: Receiver| get(r).map_or(f64::NAN, |x| min(&x.2.ns_per_pkt));
        let ours = cost(Receiver::Jitgate);
        let xdp_floor = cost(Receiver::Floor);
        let ours_recv = ours - xdp_floor;
        for (_, r, a) in results.iter().filter(|x| x.0 == level) {
            max_user = max_user.max(a.user_pct);
            min_kernel = min_kernel.min(a.kernel_share);
            let total = min(&a.ns_per_pkt);
            let spread = a
                .ns_per_pkt
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max)
                - total;
            let recv = total - xdp_floor;
            let decision = total - cost(r.floor());
            let na = || "–".to_string();
            let (recv_s, recv_x, dec_s, dec_x) = match r {
                Receiver::Floor => ("(floor)".to_string(), na(), "(floor)".to_string(), na()),
                Receiver::SkbFloor => (format!("{recv:.0}"), na(), "(floor)".to_string(), na()),
                _ => (
                    format!("{recv:.0}"),
                    format!("{:.2}", recv / ours_recv),
                    format!("{decision:.0}"),
                    format!("{:.2}", decision / ours_recv),
                ),
            };
            let mut idle = a.idle.clone();
            idle.sort();
            let mut fl = a.flood.clone();
            fl.sort();
            let (lat_idle, lat_flood, lat_ratio, fails) = if r.is_floor() {
                (
                    "– (drops the client too)".to_string(),
                    "–".to_string(),
                    "–".to_string(),
                    "–".to_string(),
                )
            } else {
                (
                    format!("{:.0} / {:.0}", pct(&idle, 50.0), pct(&idle, 99.0)),
                    format!("{:.0} / {:.0}", pct(&fl, 50.0), pct(&fl, 99.0)),
                    format!("{:.1}", pct(&fl, 99.0) / pct(&idle, 99.0)),
                    format!("{}/{}", a.idle_fail, a.flood_fail),
                )
            };
            let dropped = a.dropped.map_or("–".to_string(), |d| {
                format!("{:.3}", d as f64 / a.sent.max(1) as f64)
            });
            out.push_str(&format!(
                "| {level} | {} | {total:.0} | {spread:.0} | {recv_s} | {recv_x} | {dec_s} | {dec_x} | {:.0} | {dropped} | {lat_idle} | {lat_flood} | {lat_ratio} | {fails} |\n",
                r.name(),
                median_pps(&a.pps),
            ));
            if *r == Receiver::JitgateNoPrefilter {
                notes.push(format!(
                    "jitgate's receive-side cost with the prefilter off at {level} grants/family: {recv:.0} ns, {:.0} ns above the prefilter's {ours_recv:.0} ns",
                    recv - ours_recv
                ));
            }
            if *r == Receiver::NftInet {
                let x = recv / ours_recv;
                verdicts.push(format!(
                    "nftables inet ≥ 2× ours at {level} grants/family: {x:.1}× ({})",
                    if x >= 2.0 { "met" } else { "missed" }
                ));
            }
            if *r == Receiver::Jitgate {
                let x = pct(&fl, 99.0) / pct(&idle, 99.0);
                verdicts.push(format!(
                    "jitgate: client p99 under flood ≤ 2× idle at {level} grants/family: {x:.1}× ({})",
                    if x <= 2.0 { "met" } else { "missed" }
                ));
            }
        }
    }
    out.push_str(&format!(
        "\nMethod. Over veth the receive path runs in softirq on the CPU that sends (veth's NAPI for the XDP receivers, the per-CPU backlog otherwise, both raised by the sender's own `sendmmsg`), so the generator is pinned to one CPU ({fc}) and sends flat out: all the work a frame causes, sending and receiving, is CPU time of the sending thread (softirq work done in its context is charged to it: this kernel has no IRQ time accounting) or of ksoftirqd/{fc} when softirqs are deferred. \
         \"Flood CPU ns / frame\" is the sum of those two threads' CPU time (CLOCK_THREAD_CPUTIME_ID, schedstat) over the frames the receiver took, best of the rounds; \"spread\" is worst minus best. Other processes on this shared machine do not enter the figure, only its spread (they had up to {max_user:.0}% of the flood CPU in some window; kernel time was at least {:.0}% of it in every window). \
         The XDP floor is a drop-everything XDP program (`jitgate_drop`) measured the same way in the same run: the sender plus the cheapest possible receive. \"Receive-side ns / dropped packet\" is a receiver's figure minus that floor: for jitgate the program's own work; for nftables and iptables the stack up to their hook and the rule evaluation. \
         A second floor, a drop-everything rule at nftables' netdev ingress (priority -500), is the cheapest skb-path receive; \"decision\" is a receiver's cost above the floor of its own path (XDP floor for jitgate, skb floor for the others), i.e. the filter's own work independent of how veth delivers the frame. The target is stated on the receive-side figure. \
         \"Dropped by receiver / taken\" compares each receiver's own drop counter (jitgate `denied_no_grant`, the nft rule counter, the iptables DROP rules) with the frames taken; the client's own packets make up the rest. \
         Biases, both in the firewalls' favour: veth hands the receiver an skb the sender already allocated, so nftables and iptables do not pay the skb allocation they pay behind a real NIC, and native XDP on veth runs on that skb only after copying it into a fresh page (it cannot run on an skb head it does not own), a copy no NIC makes (it is in both floors' difference). So the receive-side ratios understate what a NIC with native XDP gives. \
         The generator is self-clocked: each frame is received before the next is sent, so a flood cannot pile up in a queue ahead of the client's SYNs here; the latency columns show interference through the shared CPU, locks and tables, not a full receive ring. Windows of {:.0} s.\n\n",
        100.0 * min_kernel,
        rig.flood_for.as_secs_f64(),
        fc = flood_cpu(),
    ));
    for v in verdicts {
        out.push_str(&format!("- Target: {v}\n"));
    }
    for n in notes {
        out.push_str(&format!("- {n}\n"));
    }
    out
}

/// Writes the rendered rule sets for `grants` grants per family into `dir`, for loading by
/// hand (`nft -f`, `iptables-restore`).
pub fn write_rules(dir: &Path, per_family: u32, dev: &str) -> Result<(), String> {
    let mut g: Vec<IpAddr> = Vec::new();
    for i in 0..per_family.saturating_sub(1) {
        g.push(flood::idle_grant(false, i));
        g.push(flood::idle_grant(true, i));
    }
    g.push("198.51.100.2".parse().map_err(|_| "addr")?);
    g.push("2001:db8:1::2".parse().map_err(|_| "addr")?);
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let w = |name: &str, body: String| {
        std::fs::write(dir.join(name), body).map_err(|e| format!("write {name}: {e}"))
    };
    w("nft-inet.nft", rules::nft_inet(&g))?;
    w("nft-netdev.nft", rules::nft_netdev(&g, dev))?;
    w("nft-netdev-drop-all.nft", rules::nft_drop_all(dev))?;
    w("iptables.rules", rules::iptables(&g, false))?;
    w("ip6tables.rules", rules::iptables(&g, true))?;
    Ok(())
}
