//! `jitgate-bench scale`: the real `jit-agent` holding 1 000 000 active grants.
//!
//! - load: 1 000 000 host grants through the admin socket (8 clients, 256 per request), time
//!   and rate; map memory (the kernel's own `memlock` figure of each pinned map, from
//!   /proc/self/fdinfo); agent RSS, and bytes per grant beside the kernel's map memory;
//! - sweep: 100 000 of them end within the same second; the time from that second until the
//!   grant map holds none of them, and until the agent has journalled and audited every
//!   expiry; meanwhile stamped UDP streams from three client namespaces check the verdicts:
//!   a source with a standing grant is admitted throughout, one whose grant ended with the
//!   100 000 is admitted before the end and dropped after it, one never granted is dropped;
//! - after the run the agent is killed (SIGKILL) and its journal replayed: it must hold
//!   exactly the grants still live;
//! - floor, same run: raw map updates and deletes for the same counts.

use crate::agent_bench::{host_key, raw_put_rate, req, socket_throughput};
use crate::probe::Stream;
use jitgate_agent::admin::{Client, GrantRequest, Request, Response, Status};
use jitgate_common::{GrantEntry, GrantKeyV4, Port, names};
use jitgate_tests::TestDataplane;
use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::netns::Lab;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use time::OffsetDateTime;

const PORT: u16 = 3389;
/// Spacing of each verdict stream's datagrams.
const EVERY: Duration = Duration::from_millis(1);
/// A datagram sent this long after the end may still have met the entry (clock conversion).
const SLACK_NS: u64 = 2_000_000;

async fn status(socket: &Path) -> Result<Status, String> {
    let mut cl = Client::connect(socket).await.map_err(|e| e.to_string())?;
    match cl.call(&Request::Status).await {
        Ok(Response::Status(s)) => Ok(*s),
        other => Err(format!("status: {other:?}")),
    }
}

async fn grant_one(socket: &Path, r: GrantRequest) -> Result<(), String> {
    let mut cl = Client::connect(socket).await.map_err(|e| e.to_string())?;
    match cl.call(&Request::Grant(r)).await {
        Ok(Response::Granted { .. }) => Ok(()),
        other => Err(format!("grant: {other:?}")),
    }
}

fn udp_grant(source: std::net::IpAddr, until: Option<OffsetDateTime>) -> GrantRequest {
    GrantRequest {
        port: Port::new(PORT).expect("port"),
        protocol: "udp".into(),
        source: jitgate_common::SourcePrefix::host(source),
        duration_secs: until.is_none().then_some(3600),
        until,
        justification: Some("scale benchmark".into()),
        max_connections: None,
    }
}

/// Verdicts of one stream over [from, to) (ns since the epoch, by send time).
fn received_in(s: &Stream, from: u64, to: u64) -> (usize, usize) {
    let (sent, rx) = s.stamps();
    let n = |v: &[u64]| v.iter().filter(|t| **t >= from && **t < to).count();
    (n(&sent), n(&rx))
}

pub fn run(quick: bool) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let total: u32 = if quick { 100_000 } else { 1_000_000 };
    let ending: u32 = total / 10;
    let standing = total - ending;

    // Floor: raw map updates and deletes, same counts, in a data plane of its own.
    let (put_rate, del_rate) = {
        let mut t = TestDataplane::with(|o| o.limits.host_grants = 1 << 21);
        let put = raw_put_rate(&mut t, 0, total);
        let start = Instant::now();
        for i in 0..ending {
            t.dp.raw_delete_host_v4(&host_key(i)).expect("raw delete");
        }
        (put, f64::from(ending) / start.elapsed().as_secs_f64())
    };

    let lab = Lab::new(3).expect("lab");
    let mut agent = AgentProc::start(
        &lab.vm,
        &args("--interface vm* --protect 22/tcp --protect 3389/udp:cut"),
    );
    let socket = agent.socket.clone();
    let rss_start = agent.rss_kib().unwrap_or(0);
    let fail = |agent: &AgentProc, e: String| -> ! {
        eprintln!("--- agent log ---\n{}", agent.log_text());
        panic!("{e}");
    };

    // Load: the standing grants, then the ending ones (all ending at one whole second).
    let t0 = Instant::now();
    let standing_rate = rt
        .block_on(socket_throughput(&socket, 0, standing, 256, Arc::new(req)))
        .unwrap_or_else(|e| fail(&agent, e));
    // Enough time to load the rest at the rate just seen, three times over, plus 10 s.
    let margin = 10.0 + 3.0 * f64::from(ending) / standing_rate;
    let now = OffsetDateTime::now_utc();
    let end = (now + Duration::from_secs_f64(margin))
        .replace_nanosecond(0)
        .expect("ns");
    let make = Arc::new(move |i: u32| GrantRequest {
        duration_secs: None,
        until: Some(end),
        ..req(i)
    });
    rt.block_on(socket_throughput(&socket, standing, ending, 256, make))
        .unwrap_or_else(|e| fail(&agent, e));
    // The verdict probes' sources: client 0 keeps a grant, client 1's ends with the rest.
    rt.block_on(async {
        grant_one(&socket, udp_grant(lab.clients[0].v4, None)).await?;
        grant_one(&socket, udp_grant(lab.clients[1].v4, Some(end))).await
    })
    .unwrap_or_else(|e| fail(&agent, e));
    let load_s = t0.elapsed().as_secs_f64();
    let end_wall = SystemTime::from(end);
    if SystemTime::now() >= end_wall {
        fail(&agent, "loading took longer than its margin".into());
    }
    let before = rt
        .block_on(status(&socket))
        .unwrap_or_else(|e| fail(&agent, e));
    let loaded = before.active_grants;
    let rss_loaded = agent.rss_kib().unwrap_or(0);
    let maps = crate::memory::map_memory(&agent.pin_dir);

    // The verdict streams, on a common epoch; `end` as ns on it.
    let epoch = Instant::now();
    let end_ns = (end_wall
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        + epoch.elapsed())
    .as_nanos() as u64;
    let stream = |i: usize| {
        Stream::start(
            &lab.client_path(i),
            &lab.vm_path(),
            lab.clients[i].vm_v4,
            PORT,
            EVERY,
            epoch,
        )
    };
    let (kept, ended, never) = (stream(0), stream(1), stream(2));

    // The sweep: poll the map for the ending keys and the agent for its table and audit.
    let grants_v4 = aya::maps::MapData::from_pin(agent.pin_dir.join(names::GRANTS_V4))
        .ok()
        .and_then(|d| {
            aya::maps::HashMap::<_, GrantKeyV4, GrantEntry>::try_from(aya::maps::Map::HashMap(d))
                .ok()
        })
        .unwrap_or_else(|| fail(&agent, "cannot open the agent's pinned grant map".into()));
    let mut remaining: Vec<GrantKeyV4> = (standing..total).map(host_key).collect();
    let live = loaded - ending as usize - 1;
    std::thread::sleep(
        end_wall
            .duration_since(SystemTime::now())
            .unwrap_or_default(),
    );
    let mut map_done = None;
    let mut agent_done = None;
    let limit = Instant::now() + Duration::from_secs(120);
    while map_done.is_none() || agent_done.is_none() {
        if Instant::now() > limit {
            fail(
                &agent,
                format!(
                    "the sweep did not finish in 120 s: {} keys left in the map",
                    remaining.len()
                ),
            );
        }
        if map_done.is_none() {
            while let Some(k) = remaining.last() {
                if grants_v4.get(k, 0).is_ok() {
                    break;
                }
                remaining.pop();
            }
            if remaining.is_empty() {
                map_done = Some(epoch.elapsed().as_nanos() as u64);
            }
        }
        if agent_done.is_none() {
            let s = rt
                .block_on(status(&socket))
                .unwrap_or_else(|e| fail(&agent, e));
            if s.active_grants == live {
                // The writer is one queue: once a later grant is acknowledged (fsynced), so
                // is the journal and audit record of every expiry before it.
                rt.block_on(grant_one(&socket, req(total)))
                    .unwrap_or_else(|e| fail(&agent, e));
                agent_done = Some(epoch.elapsed().as_nanos() as u64);
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (map_done, agent_done) = (map_done.unwrap_or(0), agent_done.unwrap_or(0));
    // Keep probing a little after the sweep, then judge every datagram by its send time.
    std::thread::sleep(Duration::from_secs(1));
    let stop = epoch.elapsed().as_nanos() as u64;
    let (kept_sent, kept_rx) = received_in(&kept, 0, stop);
    let (kept_sweep_sent, kept_sweep_rx) = received_in(&kept, end_ns, agent_done.max(map_done));
    let (_, ended_before) = received_in(&ended, 0, end_ns);
    let (ended_after_sent, ended_after_rx) = received_in(&ended, end_ns + SLACK_NS, stop);
    let (never_sent, never_rx) = received_in(&never, 0, stop);
    drop((kept, ended, never));
    let rss_after = agent.rss_kib().unwrap_or(0);

    // Durability: after SIGKILL, the journal replays to exactly the live grants.
    agent.kill();
    let replayed = jitgate_agent::journal::Journal::open(&agent.state_dir)
        .map(|(_, r)| r.grants.len())
        .unwrap_or_else(|e| fail(&agent, format!("journal replay: {e}")));
    // The live grants and the marker grant sent at the end of the sweep.
    let live = live + 1;

    let verdicts_ok = kept_rx + kept_rx / 100 >= kept_sent
        && kept_sweep_rx + kept_sweep_rx / 100 >= kept_sweep_sent
        && ended_before > 0
        && ended_after_rx == 0
        && never_rx == 0;
    let ms = |ns: u64| ns.saturating_sub(end_ns) as f64 / 1e6;
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut out = String::new();
    out.push_str(&format!(
        "Measured {} on {} CPUs. The real `jit-agent` under `ip netns exec` in a lab namespace, default map limits ({} host entries per family); grants through its admin socket, {} clients, 256 per request.\n\n",
        super::chrono_date(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        jitgate_common::limits::HOST_GRANTS,
        8
    ));
    out.push_str("| measure | figure | floor (same run) | target |\n|---|---:|---:|---|\n");
    out.push_str(&format!(
        "| load {loaded} active grants (journal + audit fsynced per request) | {load_s:.1} s ({:.0} grants/s; {standing_rate:.0}/s for the first {standing}) | {:.1} s ({put_rate:.0} raw map updates/s) |\n",
        f64::from(total) / load_s,
        f64::from(total) / put_rate
    ));
    let total_mem: u64 = maps.iter().map(|m| m.memlock).sum();
    let grant_mem: u64 = maps
        .iter()
        .filter(|m| m.name == names::GRANTS_V4)
        .map(|m| m.memlock)
        .sum();
    out.push_str(&format!(
        "| map memory (kernel `memlock`, all maps / IPv4 host grant map) | {:.1} / {:.1} MiB | |\n",
        total_mem as f64 / 1048576.0,
        grant_mem as f64 / 1048576.0
    ));
    out.push_str(&crate::memory::rows(
        loaded,
        rss_start,
        rss_loaded,
        &format!("end of the load; {:.1} MiB after the sweep", mib(rss_after)),
        256,
        &maps,
    ));
    out.push_str(&format!(
        "| {} grants ending in the same second: end → none left in the map | {:.0} ms | {:.0} ms ({del_rate:.0} raw deletes/s) |\n",
        ending + 1,
        ms(map_done),
        f64::from(ending) / del_rate * 1e3
    ));
    out.push_str(&format!(
        "| … → agent table updated, every expiry journalled and audited (a later grant acknowledged) | {:.0} ms | |\n",
        ms(agent_done)
    ));
    out.push_str(&format!(
        "| journal after SIGKILL, replayed | {replayed} grants ({}) | {live} live |\n",
        if replayed == live {
            "exact"
        } else {
            "MISMATCH"
        }
    ));
    out.push_str(&format!(
        "\nVerdicts during the run (UDP {PORT} every {} ms per source, judged by send time): standing grant {kept_rx}/{kept_sent} admitted ({kept_sweep_rx}/{kept_sweep_sent} sent between the end and the sweep's completion); grant ending with the others {ended_before} admitted before the end, {ended_after_rx}/{ended_after_sent} after it (+{} ms); never granted {never_rx}/{never_sent} admitted — {}.\n",
        EVERY.as_millis(),
        SLACK_NS / 1_000_000,
        if verdicts_ok { "correct" } else { "WRONG" }
    ));
    out.push_str("\nMap sizes (max entries → memlock):");
    for m in &maps {
        out.push_str(&format!(
            " {} {} → {:.1} MiB;",
            m.name,
            m.max_entries,
            m.memlock as f64 / 1048576.0
        ));
    }
    out.push('\n');
    print!("{out}");
    // Panic rather than exit: unwinding removes the lab, the agent and the pins.
    assert!(
        verdicts_ok && replayed == live,
        "scale: wrong verdicts or journal (see the figures above)"
    );
}
