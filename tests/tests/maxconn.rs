//! Connection limits (`maxConnections`): a grant admits its first N new connections and no
//! more, counted in the kernel without a race between CPUs; a retransmitted SYN is not a new
//! connection; the count survives the agent (its pinned map is adopted).

use jitgate_agent::{AttachMode, BootInstant, GrantId, GrantSpec, XDP_DROP, XDP_PASS};
use jitgate_common::{Counter, MaxConnections, Port, ProtectedPort, Protocol};
use jitgate_tests::bpfrun;
use jitgate_tests::frames::{Frame, L4, TCP_ACK, TCP_SYN};
use jitgate_tests::netns::Lab;
use jitgate_tests::{TestDataplane, require_root};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd as _;
use std::sync::Barrier;
use std::time::Duration;

/// A blocked connect shows as a timeout; an admitted one completes in well under this.
const CONNECT: Duration = Duration::from_millis(700);

fn spec(port: u16, proto: Protocol, src: &str) -> GrantSpec {
    GrantSpec {
        protocol: proto,
        port: Port::new(port).unwrap(),
        source: src.parse().unwrap(),
    }
}

fn protect(t: &mut TestDataplane, ports: &[&str]) {
    let ports: Vec<ProtectedPort> = ports.iter().map(|p| p.parse().unwrap()).collect();
    t.dp.set_protected(&ports).unwrap();
}

fn in_secs(s: u64) -> BootInstant {
    BootInstant::now().saturating_add(Duration::from_secs(s))
}

fn limit(n: u32) -> Option<MaxConnections> {
    Some(MaxConnections::new(n).unwrap())
}

/// A TCP segment from 198.51.100.2:`sport` to port 22 with sequence number `seq`.
fn tcp(sport: u16, flags: u8, seq: u32) -> Vec<u8> {
    let mut f = Frame::new(
        "198.51.100.2",
        "203.0.113.1",
        L4::Tcp {
            sport,
            dport: 22,
            flags,
        },
    )
    .build();
    // Ethernet (14) + IPv4 (20), then the sequence number at TCP offset 4.
    f[38..42].copy_from_slice(&seq.to_be_bytes());
    f
}

fn udp(sport: u16) -> Vec<u8> {
    Frame::new(
        "198.51.100.2",
        "203.0.113.1",
        L4::Udp { sport, dport: 3389 },
    )
    .build()
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET and sched_setaffinity only read/write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Two threads on two CPUs race new connections (distinct source ports) through the program
/// at the same instant, round after round with a fresh grant each: the grant admits exactly
/// its limit, never one more, whichever CPU wins.
#[test]
fn two_cpus_racing_for_the_last_slot_admit_exactly_the_limit() {
    if !require_root() {
        return;
    }
    let mut t = TestDataplane::new();
    protect(&mut t, &["22/tcp"]);
    let prog = bpfrun::program_fd(t.dp.program_id().unwrap()).unwrap();
    let threads = cpus().clamp(2, 4);
    // N = 1 with one attempt per CPU (the case), N = 1 with 8 each, then N = 25 with
    // 60 each. A non-atomic read-modify-write put in place of the fetch-and-add (a mutation
    // check) admitted 26 of 25 within 3 rounds.
    for (n, per_thread, rounds) in [(1u32, 1u16, 500u16), (1, 8, 200), (25, 60, 20)] {
        for round in 0..rounds {
            let id = GrantId::random();
            t.dp.add_limited_grant(
                id,
                spec(22, Protocol::Tcp, "198.51.100.0/24"),
                in_secs(120),
                limit(n),
            )
            .unwrap();
            let barrier = Barrier::new(threads);
            let passed: usize = std::thread::scope(|s| {
                let hs: Vec<_> = (0..threads)
                    .map(|k| {
                        let (prog, barrier) = (&prog, &barrier);
                        s.spawn(move || {
                            pin_to_cpu(k % cpus());
                            // Distinct 5-tuples per thread and attempt.
                            let frames: Vec<Vec<u8>> = (0..per_thread)
                                .map(|i| {
                                    // Fresh grant per round: reusing ports across
                                    // rounds is no retransmission (another grant).
                                    let sport = 1024 + k as u16 * 64 + i;
                                    tcp(sport, TCP_SYN, 7)
                                })
                                .collect();
                            barrier.wait();
                            frames
                                .iter()
                                .filter(|f| bpfrun::run_fd(prog.as_fd(), f).unwrap() == XDP_PASS)
                                .count()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).sum()
            });
            assert_eq!(
                passed, n as usize,
                "N = {n}, round {round}: {passed} connections admitted"
            );
            let used = t.dp.conn_usage(&id).unwrap();
            assert_eq!(used.admitted(), u64::from(n));
            assert_eq!(used.taken, u64::from(per_thread) * threads as u64);
            t.dp.remove_grant(&id).unwrap();
            assert!(t.dp.conn_usage(&id).is_none());
        }
    }
}

/// A retransmitted SYN (same 5-tuple, same initial sequence number) of the admitted
/// connection passes without taking a slot; a new connection on the same 5-tuple (another
/// sequence number) or another 5-tuple is refused once the limit is used; the admitted
/// connection's packets pass; an unlimited grant on another port is untouched; and the
/// count and the refusal are visible.
#[test]
fn a_retransmitted_syn_is_not_a_new_connection() {
    if !require_root() {
        return;
    }
    let mut t = TestDataplane::new();
    protect(&mut t, &["22/tcp", "3389/udp"]);
    let id = GrantId::random();
    t.dp.add_limited_grant(
        id,
        spec(22, Protocol::Tcp, "198.51.100.2"),
        in_secs(120),
        limit(1),
    )
    .unwrap();
    let mut run = |f: &[u8]| t.dp.test_run(f, 1).unwrap().action;
    assert_eq!(run(&tcp(5000, TCP_SYN, 1000)), XDP_PASS, "first SYN");
    assert_eq!(
        run(&tcp(5000, TCP_SYN, 1000)),
        XDP_PASS,
        "retransmitted SYN"
    );
    assert_eq!(run(&tcp(5000, TCP_ACK, 1001)), XDP_PASS, "admitted flow");
    assert_eq!(
        run(&tcp(5000, TCP_SYN, 9000)),
        XDP_DROP,
        "new connection on the same 5-tuple"
    );
    assert_eq!(
        run(&tcp(5001, TCP_SYN, 1000)),
        XDP_DROP,
        "second connection"
    );
    assert_eq!(
        run(&tcp(5000, TCP_SYN, 1000)),
        XDP_PASS,
        "retransmission still passes"
    );
    let used = t.dp.conn_usage(&id).unwrap();
    assert_eq!((used.admitted(), used.limit), (1, 1));
    let c = t.dp.counters().unwrap();
    assert_eq!(c.get(Counter::DeniedConnLimit), 2);

    // UDP: a flow's first packet takes the slot, its next packets pass, another flow not.
    let u = GrantId::random();
    t.dp.add_limited_grant(
        u,
        spec(3389, Protocol::Udp, "198.51.100.0/24"),
        in_secs(120),
        limit(1),
    )
    .unwrap();
    let mut run = |f: &[u8]| t.dp.test_run(f, 1).unwrap().action;
    assert_eq!(run(&udp(6000)), XDP_PASS);
    assert_eq!(run(&udp(6000)), XDP_PASS);
    assert_eq!(run(&udp(6001)), XDP_DROP);

    // An unlimited grant on the limited pair, for another host: unlimited.
    let other = Frame::new(
        "198.51.100.9",
        "203.0.113.1",
        L4::Tcp {
            sport: 1,
            dport: 22,
            flags: TCP_SYN,
        },
    );
    t.dp.add_grant(
        GrantId::random(),
        spec(22, Protocol::Tcp, "198.51.100.9"),
        in_secs(120),
    )
    .unwrap();
    for p in 1..20 {
        let f = other.clone().sport(p).build();
        assert_eq!(t.dp.test_run(&f, 1).unwrap().action, XDP_PASS);
    }
}

/// The count lives in a pinned map: an agent that stops and starts again (a new `open`
/// adopting the maps, then the journal's replay) does not give the grant new connections.
#[test]
fn the_count_survives_an_agent_restart() {
    if !require_root() {
        return;
    }
    let t = TestDataplane::new();
    let pin_dir = t.pin_dir.clone();
    let TestDataplane {
        mut dp,
        guard: _guard,
        ..
    } = t;
    dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    let id = GrantId::random();
    let g = spec(22, Protocol::Tcp, "198.51.100.0/24");
    let end = in_secs(120);
    dp.add_limited_grant(id, g.clone(), end, limit(2)).unwrap();
    assert_eq!(
        dp.test_run(&tcp(7000, TCP_SYN, 1), 1).unwrap().action,
        XDP_PASS
    );
    drop(dp);

    let mut dp =
        jitgate_agent::Dataplane::open(&jitgate_agent::DataplaneOptions::new(&pin_dir)).unwrap();
    assert!(dp.adopted());
    dp.set_protected(&["22/tcp".parse().unwrap()]).unwrap();
    // Between adoption and the replay the pinned limit keeps applying.
    assert_eq!(
        dp.test_run(&tcp(7001, TCP_SYN, 1), 1).unwrap().action,
        XDP_PASS
    );
    assert_eq!(
        dp.test_run(&tcp(7002, TCP_SYN, 1), 1).unwrap().action,
        XDP_DROP
    );
    // The journal's replay (what the daemon does at start), then applying it again.
    dp.reconcile_grants([(id, g.clone(), end, limit(2))])
        .unwrap();
    dp.add_limited_grant(id, g, end, limit(2)).unwrap();
    assert_eq!(dp.conn_usage(&id).unwrap().admitted(), 2);
    assert_eq!(
        dp.test_run(&tcp(7003, TCP_SYN, 1), 1).unwrap().action,
        XDP_DROP
    );
    assert_eq!(
        dp.test_run(&tcp(7000, TCP_SYN, 1), 1).unwrap().action,
        XDP_PASS,
        "a retransmission of the first connection"
    );
    // A replay without the grant deletes its counter.
    dp.reconcile_grants(std::iter::empty()).unwrap();
    assert!(dp.conn_usage(&id).is_none());
}

/// Real TCP over veth: two clients' connection attempts at once under a one-connection grant
/// admit exactly one, round after round with a fresh grant; the admitted connection carries
/// data.
#[test]
fn two_parallel_real_connections_under_a_one_connection_grant_admit_one() {
    if !require_root() {
        return;
    }
    let lab = Lab::new(1).expect("lab");
    let mut t = TestDataplane::new();
    let iface = lab.clients[0].vm_iface.clone();
    let a = jitgate_agent::netns::run_in(&lab.vm_path(), || t.dp.attach(&iface))
        .unwrap()
        .unwrap();
    assert_eq!(a.mode, AttachMode::Driver, "{a:?}");
    protect(&mut t, &["22/tcp"]);
    lab.tcp_server(22, false).unwrap();
    let vm: IpAddr = lab.clients[0].vm_v4;
    let dst = SocketAddr::new(vm, 22);
    for round in 0..20 {
        let id = GrantId::random();
        t.dp.add_limited_grant(
            id,
            spec(22, Protocol::Tcp, "198.51.100.0/24"),
            in_secs(120),
            limit(1),
        )
        .unwrap();
        let barrier = Barrier::new(2);
        let streams: Vec<std::net::TcpStream> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let (lab, barrier) = (&lab, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        lab.tcp_connect(0, None, dst, CONNECT).ok()
                    })
                })
                .collect();
            hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(
            streams.len(),
            1,
            "round {round}: {} admitted",
            streams.len()
        );
        {
            use std::io::{Read, Write};
            let mut s = &streams[0];
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            s.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"hello");
        }
        assert_eq!(t.dp.conn_usage(&id).unwrap().admitted(), 1);
        drop(streams);
        t.dp.remove_grant(&id).unwrap();
    }
}

/// The real agent: `jit-agent grant --max-connections 2`, restarted (SIGKILL) between the
/// connections, admits exactly two; `jit-agent grants` shows the count, the admitted sessions
/// go on, the audit log records the limit reached, and a limit of 0 is refused as bad usage.
#[test]
fn the_real_agent_keeps_the_count_across_restarts_and_shows_it() {
    if !require_root() {
        return;
    }
    use jitgate_tests::agent::{AgentProc, args};
    use std::io::{Read, Write};
    let lab = Lab::new(1).expect("lab");
    lab.tcp_server(22, false).unwrap();
    let mut agent = AgentProc::start(&lab.vm, &args("--interface vm* --protect 22/tcp:keep"));
    let dst = SocketAddr::new(lab.clients[0].vm_v4, 22);
    let o = agent.cli(&args(
        "grant --port 22 --source 198.51.100.0/24 --duration 1h --max-connections 0",
    ));
    assert_eq!(
        o.status.code(),
        Some(2),
        "a limit of 0 must be a usage error"
    );
    let id = agent.grant(&args(
        "--port 22 --source 198.51.100.0/24 --duration 1h --max-connections 2",
    ));
    assert_eq!(id.len(), 1);
    let mut first = lab
        .tcp_connect(0, None, dst, CONNECT)
        .expect("first connection");
    agent.restart();
    let conns = |agent: &AgentProc| agent.grants_json()["grants"]["connections"].clone();
    assert_eq!(
        conns(&agent)[0]["admitted"],
        1,
        "after a restart: {}",
        conns(&agent)
    );
    let _second = lab
        .tcp_connect(0, None, dst, CONNECT)
        .expect("second connection");
    assert!(
        lab.tcp_connect(0, None, dst, CONNECT).is_err(),
        "a third connection was admitted"
    );
    agent.restart();
    assert!(
        lab.tcp_connect(0, None, dst, CONNECT).is_err(),
        "a restart gave the grant a new connection"
    );
    // The admitted sessions are untouched.
    first
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    first.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    first.read_exact(&mut buf).unwrap();
    let table = agent.ok(&["grants"]);
    assert!(table.contains(" 2/2 "), "{table}");
    assert_eq!(conns(&agent)[0]["limit"], 2);
    let audit = agent.ok(&["audit", "--json"]);
    let reached: Vec<serde_json::Value> = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "grant.connection_limit_reached")
        .collect();
    assert_eq!(reached.len(), 1, "{audit}");
    assert_eq!(reached[0]["grantId"], id[0].as_str(), "{}", reached[0]);
    let v = agent.ok(&["audit", "verify"]);
    assert!(v.contains("audit log verifies"), "{v}");
}
