//! `jitgate-bench load`: the real controller with 50 enrolled agents in namespaces and 1 000
//! concurrent requesters for 60 s, each with its own requester token and its own HTTPS
//! connection, initiating requests back to back.
//!
//! Reports requests/s and p50/p99, and fails on any error response. Then checks: every
//! request reaches Applied; the activity log holds exactly one initiate entry per request
//! (nothing lost, nothing twice) and verifies; each agent holds exactly the grants of its
//! VM's requests.

use crate::e2e::{Api, ms, p50_99, set_policy, start_agents, wait_policy};
use crate::probe::pct;
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Sources in 198.18.0.0/15 (written into maps only; never sent to).
const SOURCES: u32 = 0xc612_0000;

struct Outcome {
    /// (vm index, request id, latency ns) of every request that succeeded.
    done: Vec<(usize, String, f64)>,
    errors: Vec<String>,
    elapsed: Duration,
}

/// A thousand connections need more descriptors than the usual soft limit of 1 024, here and
/// in the controller (which inherits it).
fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 && r.rlim_cur < r.rlim_max {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

pub fn run(quick: bool) {
    let (n_agents, requesters, secs) = if quick { (10, 100, 10) } else { (50, 1000, 60) };
    raise_nofile();
    let fleet = Fleet::new(n_agents).expect("fleet");
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    ctl.admin(&["rg", "add", "prod", "--owner", "ops@example.net"]);
    set_policy(&ctl, &fleet, &["198.51.100.0/24", "198.18.0.0/15"]);
    eprintln!("load: starting {n_agents} agents ...");
    let agents = start_agents(&fleet, &ctl, n_agents);
    wait_policy(&agents);
    eprintln!("load: creating {requesters} requester tokens ...");
    let tokens: Vec<String> = (0..requesters)
        .map(|i| {
            let v = ctl.admin(&[
                "token",
                "create",
                "--name",
                &format!("requester-{i:04}"),
                "--role",
                "requester",
                "--scope",
                "rg:prod",
            ]);
            v["secret"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| panic!("token create answered {v}"))
        })
        .collect();
    let apis: Vec<Arc<Api>> = tokens
        .iter()
        .map(|t| Arc::new(Api::with_token(&ctl, t, 1)))
        .collect();
    let admin = Arc::new(Api::new(&ctl));

    eprintln!("load: {requesters} requesters for {secs} s ...");
    let run = move || {
        let rt = super::runtime2();
        rt.block_on(async move {
            let next = Arc::new(AtomicUsize::new(0));
            let start = Instant::now();
            let stop = start + Duration::from_secs(secs);
            let mut tasks = Vec::new();
            for api in apis {
                let next = next.clone();
                tasks.push(tokio::spawn(async move {
                    let mut done = Vec::new();
                    let mut errors = Vec::new();
                    while Instant::now() < stop {
                        // VM i % n gets its (i / n)-th distinct source.
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let (vm, k) = (i % n_agents, (i / n_agents) as u32);
                        let src = Ipv4Addr::from(SOURCES + k).to_string();
                        let t = Instant::now();
                        match api.initiate(&format!("vm-{vm:02}"), &src).await {
                            Ok(id) => done.push((vm, id, t.elapsed().as_nanos() as f64)),
                            Err(e) => errors.push(e),
                        }
                    }
                    (done, errors)
                }));
            }
            let mut out = Outcome {
                done: Vec::new(),
                errors: Vec::new(),
                elapsed: Duration::ZERO,
            };
            for t in tasks {
                let (d, e) = t.await.map_err(|e| e.to_string())?;
                out.done.extend(d);
                out.errors.extend(e);
            }
            out.elapsed = start.elapsed();
            // Every request must reach Applied.
            let mut want = vec![0usize; n_agents];
            for (vm, _, _) in &out.done {
                want[*vm] += 1;
            }
            let deadline = Instant::now() + Duration::from_secs(300);
            for (vm, n) in want.iter().enumerate() {
                loop {
                    let got = admin.applied(&format!("vm-{vm:02}")).await?;
                    if got >= *n {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(format!("vm-{vm:02}: {got} of {n} requests Applied"));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            let drained = start.elapsed();
            // The activity log, page by page.
            let mut initiates: HashMap<String, usize> = HashMap::new();
            let mut after = 0u64;
            loop {
                let v = admin
                    .get(&format!("activityLog?after={after}&limit=100000"))
                    .await?;
                let page = v["value"].as_array().cloned().unwrap_or_default();
                if page.is_empty() {
                    break;
                }
                for e in &page {
                    after = after.max(e["seq"].as_u64().unwrap_or(0));
                    if e["operation"] == "Initiate JIT Network Access"
                        && let Some(id) = e["requestId"].as_str()
                    {
                        *initiates.entry(id.to_string()).or_default() += 1;
                    }
                }
            }
            let verify = admin.get("activityLog/verify").await?;
            Ok::<_, String>((out, drained, initiates, verify))
        })
    };
    let (out, drained, initiates, verify) =
        match jitgate_agent::netns::run_in(&Fleet::ns_path(&fleet.ws), run) {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => panic!("load: {e}"),
            Err(e) => panic!("load: {e}"),
        };

    // Checks: no loss or duplication in the log; each agent holds its VM's grants.
    let missing = out
        .done
        .iter()
        .filter(|(_, id, _)| initiates.get(id).copied().unwrap_or(0) == 0)
        .count();
    let twice = initiates.values().filter(|n| **n > 1).count();
    let mut per_vm = vec![0usize; n_agents];
    for (vm, _, _) in &out.done {
        per_vm[*vm] += 1;
    }
    let wrong_agents: Vec<String> = agents
        .iter()
        .enumerate()
        .filter_map(|(i, a)| {
            let n = a.grant_count();
            (n != per_vm[i]).then(|| format!("vm-{i:02} holds {n}, expected {}", per_vm[i]))
        })
        .collect();
    let mut lat: Vec<f64> = out.done.iter().map(|d| d.2).collect();
    lat.sort_by(f64::total_cmp);
    let n = out.done.len();
    let rate = n as f64 / out.elapsed.as_secs_f64();

    let mut s = String::new();
    s.push_str(&format!(
        "Measured {} on {} CPUs. Controller (SQLite, synchronous=full) in a workstation namespace with {n_agents} enrolled agents, each in its own VM namespace; {requesters} requesters, each with its own requester token (scope rg:prod) and its own HTTPS connection, initiating back to back for {secs} s (one request = one grant on one VM, round-robin over the VMs, distinct sources). Everything on the same cores.\n\n",
        super::chrono_date(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    s.push_str("| measure | figure |\n|---|---:|\n");
    s.push_str(&format!("| requests initiated | {n} |\n"));
    s.push_str(&format!("| requests/s accepted by the API | {rate:.0} |\n"));
    s.push_str(&format!(
        "| initiate latency p50 / p99 (max {:.0} ms) | {} |\n",
        ms(pct(&lat, 1.0)),
        p50_99(&lat)
    ));
    s.push_str(&format!("| error responses | {} |\n", out.errors.len()));
    s.push_str(&format!(
        "| all Applied (start → every agent acknowledged) | {:.1} s ({:.0} grants/s end to end) |\n",
        drained.as_secs_f64(),
        n as f64 / drained.as_secs_f64()
    ));
    s.push_str(&format!(
        "| activity log: requests without an initiate entry / with more than one | {missing} / {twice} |\n"
    ));
    s.push_str(&format!(
        "| activity log verifies | {} ({} entries) |\n",
        verify["ok"], verify["entries"]
    ));
    s.push_str(&format!(
        "| agents holding other than their VM's grants | {} of {n_agents} |\n",
        wrong_agents.len()
    ));
    print!("{s}");
    if let Some(e) = out.errors.first() {
        eprintln!("first error: {e}");
    }
    assert!(
        out.errors.is_empty()
            && missing == 0
            && twice == 0
            && verify["ok"] == true
            && wrong_agents.is_empty(),
        "load: checks failed (see the figures above): {wrong_agents:?}"
    );
}
