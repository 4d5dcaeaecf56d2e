//! `jitgate-bench e2e`: the whole system in namespaces — the real controller, enrolled agents,
//! and an operator's HTTPS calls from the workstation.
//!
//! - request → first admitted packet at the VM, p50/p99, beside the floor measured the same
//!   way in the same run: a local grant through the same agent's admin socket (what
//!   `jit-agent grant` does). Rounds alternate between the two.
//! - revoke → the door shut, both ways.
//! - grants fanned out per second across many agents: requests for every VM are initiated
//!   concurrently; the clock stops when the controller has every one marked Applied (the
//!   agent acknowledged it after journal + map).

use crate::probe::{Prober, pct};
use jitgate_agent::admin::{Client, GrantRequest, Request, Response};
use jitgate_common::Port;
use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::time::{Duration, Instant};

const PROBE_PORT: u16 = 3389;
/// Concurrent HTTPS callers in the fan-out phase.
const CALLERS: usize = 32;

pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    pub(crate) fn new(ctl: &ControllerProc) -> Api {
        Api::with_token(ctl, &ctl.admin_token, CALLERS)
    }

    /// A client of its own (`pool` connections at most) calling as `token`.
    pub(crate) fn with_token(ctl: &ControllerProc, token: &str, pool: usize) -> Api {
        let pem = std::fs::read(&ctl.ca).expect("controller CA");
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA pem"))
            .pool_max_idle_per_host(pool)
            .build()
            .expect("https client");
        Api {
            client,
            base: format!("https://{}", ctl.api),
            token: token.to_string(),
        }
    }

    /// What `jit request VM --port 3389/udp --source SRC --duration 1h` sends; returns the
    /// request id.
    pub(crate) async fn initiate(&self, vm: &str, source: &str) -> Result<String, String> {
        let body = json!({"virtualMachines": [{"id": vm, "ports": [{"number": PROBE_PORT,
            "protocol": "UDP", "allowedSourceAddressPrefix": source, "duration": "PT1H"}]}],
            "justification": "e2e benchmark"});
        let v = self
            .call(self.client.post(format!(
                "{}/api/v1/jitNetworkAccessPolicies/default/initiate",
                self.base
            )))
            .json(&body)
            .send()
            .await;
        let v = json_of(v).await?;
        v["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("initiate answered without an id: {v}"))
    }

    pub(crate) async fn revoke(&self, id: &str) -> Result<(), String> {
        let r = self
            .call(
                self.client
                    .post(format!("{}/api/v1/requests/{id}/revoke", self.base)),
            )
            .send()
            .await;
        json_of(r).await.map(|_| ())
    }

    /// How many of the VM's requests the controller has marked Applied.
    pub(crate) async fn applied(&self, vm: &str) -> Result<usize, String> {
        let r = self
            .call(self.client.get(format!(
                "{}/api/v1/virtualMachines/{vm}/requests?limit=10000",
                self.base
            )))
            .send()
            .await;
        let v = json_of(r).await?;
        let list = v["value"].as_array().cloned().unwrap_or_default();
        Ok(list.iter().filter(|r| r["status"] == "Applied").count())
    }

    /// POST `body` to `path` (from /api/v1/); the answer as JSON.
    pub(crate) async fn post(&self, path: &str, body: &Value) -> Result<Value, String> {
        let r = self
            .call(self.client.post(format!("{}/api/v1/{path}", self.base)))
            .json(body)
            .send()
            .await;
        json_of(r).await
    }

    /// GET `path` (from /api/v1/) as JSON.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, String> {
        let r = self
            .call(self.client.get(format!("{}/api/v1/{path}", self.base)))
            .send()
            .await;
        json_of(r).await
    }

    fn call(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        b.bearer_auth(&self.token)
    }
}

async fn json_of(r: reqwest::Result<reqwest::Response>) -> Result<Value, String> {
    let r = r.map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
    }
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}

/// One round's figures, in ns: request sent → first packet, reply received → first packet
/// (0 when the door opened before the reply arrived), revoke sent → last packet.
#[derive(Default)]
struct Samples {
    sent: Vec<f64>,
    returned: Vec<f64>,
    revoke: Vec<f64>,
}

impl Samples {
    fn sort(&mut self) {
        for v in [&mut self.sent, &mut self.returned, &mut self.revoke] {
            v.sort_by(f64::total_cmp);
        }
    }
}

pub(crate) fn ms(ns: f64) -> f64 {
    ns / 1e6
}

pub(crate) fn p50_99(v: &[f64]) -> String {
    format!("{:.2} / {:.2} ms", ms(pct(v, 0.5)), ms(pct(v, 0.99)))
}

/// Enrols `n` VMs of `fleet` (vm-00 ...) and starts their agents.
pub(crate) fn start_agents(fleet: &Fleet, ctl: &ControllerProc, n: usize) -> Vec<AgentProc> {
    (0..n)
        .map(|i| {
            let vm = &fleet.vms[i];
            let token = ctl.add_vm(&format!("vm-{i:02}"), vm.v4);
            AgentProc::start_enrolled(
                &vm.ns,
                &args("--interface eth0 --protect 3389/udp --flow-idle-timeout 60s"),
                &ctl.api,
                &ctl.ca,
                &token,
            )
        })
        .collect()
}

/// Group `prod`'s policy: 3389/udp from `sources` (e.g. "198.51.100.0/24"), up to 3 h, cut.
pub(crate) fn set_policy(ctl: &ControllerProc, fleet: &Fleet, sources: &[&str]) {
    let mut a = args("policy set --resource-group prod --port 3389/udp --max 3h --on-expiry cut");
    for s in sources {
        a.extend(["--source", s]);
    }
    let o = ctl.jit(&fleet.ws, &a);
    assert!(
        o.status.success(),
        "policy set: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Waits until every agent runs the controller's policy (3389/udp, cut).
pub(crate) fn wait_policy(agents: &[AgentProc]) {
    for a in agents {
        assert!(
            jitgate_tests::wait_until(Duration::from_secs(20), || a
                .ok(&["status"])
                .contains("3389/udp:cut")),
            "the policy did not reach an agent: {}",
            a.ok(&["status"])
        );
    }
}

fn latency(rounds: usize) -> (Samples, Samples) {
    let fleet = Fleet::new(1).expect("fleet");
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    // Registered and given its policy before the agent enrols.
    let token = ctl.add_vm("vm-00", fleet.vms[0].v4);
    set_policy(&ctl, &fleet, &["198.51.100.0/24"]);
    let agent = AgentProc::start_enrolled(
        &fleet.vms[0].ns,
        &args("--interface eth0 --protect 3389/udp --flow-idle-timeout 60s"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    wait_policy(std::slice::from_ref(&agent));
    let ws = Fleet::ns_path(&fleet.ws);
    let p = Prober::start(
        &ws,
        &Fleet::ns_path(&fleet.vms[0].ns),
        fleet.vms[0].v4,
        PROBE_PORT,
    );
    let api = Api::new(&ctl);
    let socket = agent.socket.clone();
    let fail = |e: String| -> ! {
        eprintln!("--- agent log ---\n{}", agent.log_text());
        panic!("{e}");
    };
    let src: IpAddr = WS_V4.parse().expect("ws address");
    let run = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut local = Client::connect(&socket).await.map_err(|e| e.to_string())?;
            let (mut ctl_s, mut floor) = (Samples::default(), Samples::default());
            for round in 0..rounds {
                if round % 100 == 0 {
                    eprintln!("e2e latency: round {round}/{rounds}");
                }
                // Through the controller.
                p.wait_closed();
                p.arm();
                let t0 = p.now();
                let id = api.initiate("vm-00", WS_V4).await?;
                let t1 = p.now();
                let first = p.wait_first();
                let t2 = p.now();
                api.revoke(&id).await?;
                let last = p.wait_closed();
                ctl_s.sent.push((first - t0) as f64);
                ctl_s.returned.push(first.saturating_sub(t1) as f64);
                ctl_s.revoke.push(last.saturating_sub(t2) as f64);

                // The floor: a local grant through the same agent.
                p.arm();
                let t0 = p.now();
                let r = Request::Grant(GrantRequest {
                    port: Port::new(PROBE_PORT).expect("port"),
                    protocol: "udp".into(),
                    source: jitgate_common::SourcePrefix::host(src),
                    duration_secs: Some(3600),
                    until: None,
                    justification: Some("e2e floor".into()),
                    max_connections: None,
                });
                let id = match local.call(&r).await.map_err(|e| e.to_string())? {
                    Response::Granted { grants } => grants[0].id,
                    other => return Err(format!("local grant: {other:?}")),
                };
                let t1 = p.now();
                let first = p.wait_first();
                let t2 = p.now();
                match local
                    .call(&Request::Revoke { id: id.to_string() })
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Response::Revoked { .. } => {}
                    other => return Err(format!("local revoke: {other:?}")),
                }
                let last = p.wait_closed();
                floor.sent.push((first - t0) as f64);
                floor.returned.push(first.saturating_sub(t1) as f64);
                floor.revoke.push(last.saturating_sub(t2) as f64);
            }
            Ok::<_, String>((ctl_s, floor))
        })
    };
    // The HTTPS client lives in the workstation's namespace.
    match jitgate_agent::netns::run_in(&ws, run) {
        Ok(Ok((mut a, mut b))) => {
            a.sort();
            b.sort();
            (a, b)
        }
        Ok(Err(e)) => fail(e),
        Err(e) => fail(e.to_string()),
    }
}

struct FanOut {
    agents: usize,
    /// Grants per VM in one run.
    per_vm: usize,
    /// Runs of each phase (the best is reported).
    runs: usize,
    /// Initiates/s the API took with no agent connected (to VMs without one), per run.
    floor: Vec<f64>,
    /// Grants/s from the first initiate to every one Applied, per run.
    fanout: Vec<f64>,
    /// Initiates/s the API took in the fan-out runs (agents connected).
    initiate: Vec<f64>,
}

/// Runs of each fan-out phase; the best counts (the "best of 3").
const FANOUT_RUNS: usize = 3;

/// Initiates `per_vm` requests on each of `vms`, `CALLERS` at a time, source k of a VM
/// `198.51.100.(100 + first_source + k)`; returns the time it took.
async fn initiate_all(
    api: &std::sync::Arc<Api>,
    vms: &[String],
    per_vm: usize,
    first_source: usize,
) -> Result<Duration, String> {
    let start = Instant::now();
    let total = vms.len() * per_vm;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let vms = std::sync::Arc::new(vms.to_vec());
    let mut tasks = Vec::new();
    for _ in 0..CALLERS {
        let (api, next, vms) = (api.clone(), next.clone(), vms.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return Ok::<_, String>(());
                }
                // Distinct sources in the workstation's network (written into maps only):
                // VM i % n gets grant i / n.
                let (vm, k) = (i % vms.len(), i / vms.len());
                let src = format!("198.51.100.{}", 100 + first_source + k);
                api.initiate(&vms[vm], &src).await?;
            }
        }));
    }
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    Ok(start.elapsed())
}

/// The fan-out and its floor: first, with no agent connected, `FANOUT_RUNS` runs of the same
/// requests to VMs that have none (the initiates/s the API takes alone); then the agents
/// start and `FANOUT_RUNS` runs to theirs, each timed until every grant is Applied.
fn fan_out(n_agents: usize, per_vm: usize) -> FanOut {
    let fleet = Fleet::new(n_agents).expect("fleet");
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    ctl.admin(&["rg", "add", "prod", "--owner", "ops@example.net"]);
    set_policy(&ctl, &fleet, &["198.51.100.0/24"]);
    // The floor's VMs: registered in the same group, never enrolled; a set per run so that
    // no request supersedes another.
    let floor_vms: Vec<Vec<String>> = (0..FANOUT_RUNS)
        .map(|r| {
            (0..n_agents)
                .map(|i| {
                    let name = format!("idle-{r}-{i:02}");
                    let addr: IpAddr = format!("203.0.113.{}", 1 + r * n_agents + i)
                        .parse()
                        .expect("address");
                    ctl.add_vm(&name, addr);
                    name
                })
                .collect()
        })
        .collect();
    let api = std::sync::Arc::new(Api::new(&ctl));
    let ws = Fleet::ns_path(&fleet.ws);
    let mut floor = Vec::new();
    for vms in &floor_vms {
        let api = api.clone();
        let vms = vms.clone();
        let took = jitgate_agent::netns::run_in(&ws, move || {
            super::runtime2().block_on(initiate_all(&api, &vms, per_vm, 0))
        });
        match took {
            Ok(Ok(t)) => floor.push((n_agents * per_vm) as f64 / t.as_secs_f64()),
            Ok(Err(e)) => panic!("fan-out floor: {e}"),
            Err(e) => panic!("fan-out floor: {e}"),
        }
    }
    eprintln!("fan-out: floor {floor:.0?} initiates/s; starting {n_agents} agents ...");
    let agents = start_agents(&fleet, &ctl, n_agents);
    wait_policy(&agents);
    let vms: Vec<String> = (0..n_agents).map(|i| format!("vm-{i:02}")).collect();
    let (mut fanout, mut initiate) = (Vec::new(), Vec::new());
    for run in 0..FANOUT_RUNS {
        let (api, vms) = (api.clone(), vms.clone());
        let measured = jitgate_agent::netns::run_in(&ws, move || {
            super::runtime2().block_on(async move {
                let start = Instant::now();
                let initiated = initiate_all(&api, &vms, per_vm, run * per_vm).await?;
                // Applied counts every run's grants so far.
                let want = per_vm * (run + 1);
                let mut pending: Vec<&String> = vms.iter().collect();
                let deadline = Instant::now() + Duration::from_secs(120);
                while !pending.is_empty() {
                    let mut still = Vec::new();
                    for vm in pending {
                        if api.applied(vm).await? < want {
                            still.push(vm);
                        }
                    }
                    pending = still;
                    if Instant::now() > deadline {
                        return Err(format!("not applied within 120 s on {pending:?}"));
                    }
                    if !pending.is_empty() {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Ok::<_, String>((initiated, start.elapsed()))
            })
        });
        let (initiated, applied) = match measured {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => panic!("fan-out: {e}"),
            Err(e) => panic!("fan-out: {e}"),
        };
        let total = (n_agents * per_vm) as f64;
        initiate.push(total / initiated.as_secs_f64());
        fanout.push(total / applied.as_secs_f64());
        eprintln!(
            "fan-out run {}: {:.0} grants/s applied, {:.0} initiates/s",
            run + 1,
            fanout[run],
            initiate[run]
        );
    }
    // Each agent holds exactly its grants (nothing lost, nothing applied twice).
    for (i, a) in agents.iter().enumerate() {
        assert_eq!(
            a.grant_count(),
            per_vm * FANOUT_RUNS,
            "agent vm-{i:02} holds a wrong number of grants: {}",
            a.grants_json()
        );
    }
    FanOut {
        agents: n_agents,
        per_vm,
        runs: FANOUT_RUNS,
        floor,
        fanout,
        initiate,
    }
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(" / ")
}

pub fn run(quick: bool) {
    let rounds = if quick { 50 } else { 1000 };
    let (n_agents, per_vm) = if quick { (10, 10) } else { (50, 40) };
    let (c, f) = latency(rounds);
    let fo = fan_out(n_agents, per_vm);
    let p99 = ms(pct(&c.returned, 0.99));

    let mut out = String::new();
    out.push_str(&format!(
        "Measured {} on {} CPUs. Controller (SQLite, synchronous=full) and the HTTPS caller in a workstation namespace, each agent in its own VM namespace on a bridge; everything on the same cores.\n\n",
        super::chrono_date(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    ));
    out.push_str(&format!(
        "Latency over {rounds} rounds; each round is one request through the controller and one local grant through the same agent's admin socket (the floor), each revoked before the next.\n\n"
    ));
    out.push_str("| measure | through the controller | floor: local `jit-agent grant` (same run) | target |\n|---|---:|---:|---|\n");
    out.push_str(&format!(
        "| reply returned → first admitted packet, p50 / p99 | {} | {} | p99 ≤ 50 ms ({}) |\n",
        p50_99(&c.returned),
        p50_99(&f.returned),
        if p99 <= 50.0 { "met" } else { "missed" }
    ));
    out.push_str(&format!(
        "| request sent → first admitted packet, p50 / p99 | {} | {} | |\n",
        p50_99(&c.sent),
        p50_99(&f.sent)
    ));
    out.push_str(&format!(
        "| revoke sent → last admitted packet, p50 / p99 | {} | {} | ≤ 1 s |\n",
        p50_99(&c.revoke),
        p50_99(&f.revoke)
    ));
    let (floor, fan) = (best(&fo.floor), best(&fo.fanout));
    let share = 100.0 * fan / floor;
    out.push_str(&format!(
        "\nFan-out: {runs} runs of {} requests ({} per VM, distinct sources, one grant each) initiated by {CALLERS} concurrent HTTPS callers across {} agents; the clock stops when the controller shows every one Applied (each agent acknowledged after journal + map); afterwards every agent holds exactly its {}. The floor, before any agent starts: {runs} runs of the same requests to as many VMs that have no agent (registered in the same group, never enrolled), timed until the last answer.\n\n",
        fo.agents * fo.per_vm,
        fo.per_vm,
        fo.agents,
        fo.per_vm * fo.runs,
        runs = fo.runs,
    ));
    out.push_str("| measure | best of runs (each run) | floor: initiates/s with no agent connected, best (each run) | share of the floor (target ≥ 60 %) |\n|---|---:|---:|---:|\n");
    out.push_str(&format!(
        "| grants fanned out per second (initiate → Applied on all {} agents) | {fan:.0} ({}) | {floor:.0} ({}) | {share:.0} % ({}; {:+.0}/s) |\n",
        fo.agents,
        list(&fo.fanout),
        list(&fo.floor),
        if share >= 60.0 { "met" } else { "missed" },
        fan - floor,
    ));
    out.push_str(&format!(
        "| initiates/s the API took during the fan-out runs (agents connected) | {:.0} ({}) | | |\n",
        best(&fo.initiate),
        list(&fo.initiate)
    ));
    out.push_str("\nThe probe is a UDP datagram every ~100 µs from the workstation to the VM's protected port 3389/udp, so each figure includes up to ~0.1 ms of probe spacing. \"Reply returned\" counts 0 for a round where the door was already open when the reply arrived (the controller pushes the grant as soon as it commits, before answering).\n");
    print!("{out}");
}
