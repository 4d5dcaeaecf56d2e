//! `jitgate-bench agent`: the agent under load, through its real admin socket.
//!
//! - grants/s through the socket: 8 concurrent clients, batched requests and single ones;
//! - grants/s through the library (grant table + map writes, no journal) and the floor: raw
//!   map updates, in the same run;
//! - grant request → first admitted packet, p50/p99, in a namespace, beside the same path
//!   without the agent (library write → first packet);
//! - agent RSS at 100 000 active grants, and bytes per grant beside the kernel's map memory.

use jitgate_agent::admin::{Client, GrantRequest, Request, Response};
use jitgate_agent::{BootInstant, GrantId, GrantSpec};
use jitgate_common::{GrantEntry, GrantKeyV4, Port, Protocol, SourcePrefix};
use jitgate_tests::TestDataplane;
use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::netns::Lab;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::probe::{Prober, pct};

const CLIENTS: usize = 8;

fn host(i: u32) -> SourcePrefix {
    // Written into maps only; no packet is ever sent from or to these.
    SourcePrefix::host(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
}

/// The host map key of `host(i)` on TCP 22.
pub(crate) fn host_key(i: u32) -> GrantKeyV4 {
    GrantKeyV4 {
        proto: 6,
        port: 22u16.to_be_bytes(),
        addr: (0x0a00_0000 + i).to_be_bytes(),
    }
}

/// Raw map updates/s: `host_key(first + i)` for i in 0..n, bypassing the grant table (the
/// floor of a grant write).
pub(crate) fn raw_put_rate(t: &mut TestDataplane, first: u32, n: u32) -> f64 {
    let entry = GrantEntry {
        expires_at_ns: u64::MAX,
        grant_id: [1; 16],
    };
    let start = Instant::now();
    for i in first..first + n {
        t.dp.raw_put_host_v4(host_key(i), entry)
            .expect("raw update");
    }
    f64::from(n) / start.elapsed().as_secs_f64()
}

pub(crate) fn req(i: u32) -> GrantRequest {
    GrantRequest {
        port: Port::new(22).expect("22"),
        protocol: "tcp".into(),
        source: host(i),
        duration_secs: Some(3600),
        until: None,
        justification: Some("bench".into()),
        max_connections: None,
    }
}

/// Sends `total` grants (`make(i)` for i in `first..first + total`) from `CLIENTS`
/// concurrent connections, `batch` per request; returns grants/s.
pub(crate) async fn socket_throughput(
    socket: &std::path::Path,
    first: u32,
    total: u32,
    batch: u32,
    make: Arc<dyn Fn(u32) -> GrantRequest + Send + Sync>,
) -> Result<f64, String> {
    let per = total / CLIENTS as u32;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS as u32 {
        let socket = socket.to_path_buf();
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut cl = Client::connect(&socket).await.expect("connect");
            let base = first + c * per;
            let mut i = 0;
            while i < per {
                let n = batch.min(per - i);
                let r = if n == 1 {
                    Request::Grant(make(base + i))
                } else {
                    Request::GrantBatch((0..n).map(|k| make(base + i + k)).collect())
                };
                match cl.call(&r).await {
                    Ok(Response::Granted { grants }) if grants.len() == n as usize => {}
                    other => return Err(format!("grant failed: {other:?}")),
                }
                i += n;
            }
            Ok(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(f64::from(per * CLIENTS as u32) / start.elapsed().as_secs_f64())
}

fn prober(lab: &Lab) -> Prober {
    Prober::start(
        &lab.client_path(0),
        &lab.vm_path(),
        lab.clients[0].vm_v4,
        3389,
    )
}

pub fn run(quick: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total: u32 = if quick { 10_000 } else { 100_000 };
    let single: u32 = if quick { 800 } else { 8_000 };
    let rounds = if quick { 30 } else { 200 };

    // Floor and library path, in a data plane of their own.
    let (floor_rate, lib_rate) = {
        let mut t = TestDataplane::with(|o| o.limits.host_grants = 1 << 20);
        // Keys apart from the library path's grants (10.0.0.0 + i).
        let floor = raw_put_rate(&mut t, 0x0100_0000, total);
        let end = BootInstant::now().saturating_add(Duration::from_secs(3600));
        let start = Instant::now();
        for i in 0..total {
            let spec = GrantSpec {
                protocol: Protocol::Tcp,
                port: Port::new(22).expect("22"),
                source: host(i),
            };
            t.dp.add_grant(GrantId::random(), spec, end)
                .expect("add grant");
        }
        (floor, f64::from(total) / start.elapsed().as_secs_f64())
    };

    // Latency floor: library write → first admitted packet, no agent.
    let floor_lat = {
        let lab = Lab::new(1).expect("lab");
        let mut t = TestDataplane::new();
        let iface = lab.clients[0].vm_iface.clone();
        jitgate_agent::netns::run_in(&lab.vm_path(), || t.dp.attach(&iface))
            .expect("netns")
            .expect("attach");
        t.dp.set_protected(&["3389/udp".parse().expect("3389/udp")])
            .expect("protect");
        let p = prober(&lab);
        let mut lat = Vec::new();
        for _ in 0..rounds {
            p.wait_closed();
            p.arm();
            let id = GrantId::random();
            let t0 = p.now();
            let spec = GrantSpec {
                protocol: Protocol::Udp,
                port: Port::new(3389).expect("3389"),
                source: "198.51.100.2".parse().expect("src"),
            };
            t.dp.add_grant(
                id,
                spec,
                BootInstant::now().saturating_add(Duration::from_secs(60)),
            )
            .expect("grant");
            lat.push((p.wait_first() - t0) as f64);
            t.dp.remove_grant(&id).expect("remove");
            for (k, _) in t.dp.flows() {
                let _ = t.dp.remove_flow(&k);
            }
        }
        lat.sort_by(f64::total_cmp);
        lat
    };

    let lab = Lab::new(1).expect("lab");
    let agent = AgentProc::start(
        &lab.vm,
        &args("--interface vm* --protect 22/tcp --protect 3389/udp --flow-idle-timeout 60s"),
    );
    let socket = agent.socket.clone();
    let rss_before = agent.rss_kib().unwrap_or(0);
    // Panic rather than exit: unwinding drops the agent, the lab and the pins.
    let fail = |e: String| -> ! {
        eprintln!("--- agent log ---\n{}", agent.log_text());
        panic!("{e}");
    };
    let batched = rt
        .block_on(socket_throughput(&socket, 0, total, 256, Arc::new(req)))
        .unwrap_or_else(|e| fail(e));
    let rss_burst = agent.rss_kib().unwrap_or(0);
    // Steady state: after the agent's next sweep returns the burst's freed buffers.
    std::thread::sleep(Duration::from_secs(6));
    let rss_loaded = agent.rss_kib().unwrap_or(0);
    let maps = crate::memory::map_memory(&agent.pin_dir);
    let singles = rt
        .block_on(socket_throughput(&socket, total, single, 1, Arc::new(req)))
        .unwrap_or_else(|e| fail(e));

    // Grant request → first admitted packet, through the agent holding all those grants.
    let p = prober(&lab);
    let mut lat = Vec::new();
    let mut acks = Vec::new();
    rt.block_on(async {
        let mut cl = Client::connect(&socket).await.expect("connect");
        for _ in 0..rounds {
            p.wait_closed();
            p.arm();
            let t0 = p.now();
            let r = Request::Grant(GrantRequest {
                port: Port::new(3389).expect("3389"),
                protocol: "udp".into(),
                source: "198.51.100.2".parse().expect("src"),
                duration_secs: Some(60),
                until: None,
                justification: None,
                max_connections: None,
            });
            let id = match cl.call(&r).await.expect("grant") {
                Response::Granted { grants } => grants[0].id,
                other => panic!("{other:?}"),
            };
            acks.push((p.now() - t0) as f64);
            lat.push((p.wait_first() - t0) as f64);
            match cl
                .call(&Request::Revoke { id: id.to_string() })
                .await
                .expect("revoke")
            {
                Response::Revoked { .. } => {}
                other => panic!("{other:?}"),
            }
        }
    });
    drop(p);
    drop(agent);
    drop(lab);
    let booked = crate::booked::measure(rounds);
    lat.sort_by(f64::total_cmp);
    acks.sort_by(f64::total_cmp);
    let ms = |ns: f64| ns / 1e6;
    let active = total + single;

    let mut out = String::new();
    out.push_str(&format!(
        "Measured {} on {} CPUs. The agent runs under `ip netns exec` in a lab namespace, as in production; clients use its admin socket.\n\n",
        super::chrono_date(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    out.push_str("| measure | figure | floor (same run) | target |\n|---|---:|---:|---|\n");
    out.push_str(&format!(
        "| grants/s through the socket, {CLIENTS} clients, 256 per request (journal + audit fsynced before each reply) | {batched:.0} | {floor_rate:.0} raw map updates/s | ≥ 20 000 ({}) |\n",
        if batched >= 20_000.0 { "met" } else { "missed" }
    ));
    out.push_str(&format!(
        "| grants/s through the socket, {CLIENTS} clients, 1 per request (group commit only) | {singles:.0} | {floor_rate:.0} raw map updates/s | |\n"
    ));
    out.push_str(&format!(
        "| grants/s through the library (grant table + maps, no journal) | {lib_rate:.0} | {floor_rate:.0} raw map updates/s | |\n"
    ));
    out.push_str(&format!(
        "| grant request → first admitted packet, p50 / p99 ({rounds} rounds, {active} grants active) | {:.2} / {:.2} ms | {:.2} / {:.2} ms (library write → packet, no agent) | p99 ≤ 5 ms ({}) |\n",
        ms(pct(&lat, 0.5)),
        ms(pct(&lat, 0.99)),
        ms(pct(&floor_lat, 0.5)),
        ms(pct(&floor_lat, 0.99)),
        if ms(pct(&lat, 0.99)) <= 5.0 { "met" } else { "missed" }
    ));
    out.push_str(&format!(
        "| grant request → durable acknowledgement, p50 / p99 | {:.2} / {:.2} ms | | |\n",
        ms(pct(&acks, 0.5)),
        ms(pct(&acks, 0.99))
    ));
    out.push_str(&crate::booked::row(&booked));
    out.push_str(&crate::memory::rows(
        total as usize,
        rss_before,
        rss_loaded,
        &format!(
            "steady; {:.1} MiB right after the burst",
            rss_burst as f64 / 1024.0
        ),
        48,
        &maps,
    ));
    out.push_str("\nThe probe sends a UDP datagram every ~100 µs from the client namespace to a protected port; \"first admitted packet\" is the first datagram the vm's socket receives after the request was sent, so the figures include up to ~0.1 ms of probe spacing.\n");
    print!("{out}");
}
