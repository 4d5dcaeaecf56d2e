//! Fleet benchmark (docs/ha.md): N simulated agents speaking the real protocol (enrolled over
//! HTTPS, mutual TLS, this build's protocol level or `--level`, signatures checked, grants
//! acknowledged, a hook report before each status report every 10 s, grants reported with
//! their limits, and pongs, each as the real agent sends them at that level) against
//! K real `jit-controller` processes on one throwaway PostgreSQL cluster, with requests
//! initiated over HTTPS at a fixed rate. No XDP: this measures the control plane.
//!
//! cargo run --release -p jitgate-controller --example fleet_bench -- [--agents N (10000)]
//!     [--controllers K (1)] [--rate R (500)] [--seconds S (20)] [--idle S (30)]
//!     [--ping-seconds S (2)] [--answer-pings] [--level L] [--kill-one]
//!
//! Reports: connections held, controller RSS per connected agent, the CPU the fleet's
//! keepalive costs when idle (controllers and PostgreSQL together, and the generator's own),
//! and request → agent acknowledgement p50/p99 at the given rate, beside the same initiates'
//! HTTP latency (the floor: what the API alone takes). With `--kill-one` (two controllers or
//! more), the first controller is killed (SIGKILL) a third of the way into the load: how long
//! its agents take to be served by another controller (they move as the real agent does:
//! the next endpoint at once), and whether any grant whose initiate was answered OK never
//! reached its agent. Markdown on stdout, progress on stderr.
//! All traffic is to 127.0.0.1 and a unix socket.

mod agent;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use jitgate_api::{PolicyBody, Role, Scope};
use jitgate_controller::app::{App, Parts};
use jitgate_controller::authz::Caller;
use jitgate_controller::policies::Target;
use jitgate_controller::store::DbOptions;
use serde_json::{Value, json};

use agent::{Identity, Shared, keep_agent};

struct Opts {
    agents: usize,
    controllers: usize,
    rate: u64,
    seconds: u64,
    idle: u64,
    /// The controllers' `agent_ping_seconds`.
    ping: u64,
    /// Answer every ping, as agents below level 10 do (for comparison).
    answer_pings: bool,
    /// The protocol level the simulated agents announce (for comparison with older agents).
    level: u32,
    /// Kill the first controller during the load (failover).
    kill_one: bool,
}

fn parse_args() -> Result<Opts> {
    let mut o = Opts {
        agents: 10_000,
        controllers: 1,
        rate: 500,
        seconds: 20,
        idle: 30,
        ping: 2,
        answer_pings: false,
        level: jitgate_proto::PROTOCOL_LEVEL,
        kill_one: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().context("missing value");
        match a.as_str() {
            "--agents" => o.agents = val()?.parse()?,
            "--controllers" => o.controllers = val()?.parse()?,
            "--rate" => o.rate = val()?.parse()?,
            "--seconds" => o.seconds = val()?.parse()?,
            "--idle" => o.idle = val()?.parse()?,
            "--ping-seconds" => o.ping = val()?.parse()?,
            "--answer-pings" => o.answer_pings = true,
            "--level" => o.level = val()?.parse()?,
            "--kill-one" => o.kill_one = true,
            "-h" | "--help" => {
                println!(
                    "fleet_bench [--agents N (10000)] [--controllers K (1)] [--rate R (500)] [--seconds S (20)] [--idle S (30)] [--ping-seconds S (2)] [--answer-pings] [--level L (this build's, from 10 up)] [--kill-one]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}"),
        }
    }
    if !(jitgate_proto::LEVEL_QUIET_PINGS..=jitgate_proto::PROTOCOL_LEVEL).contains(&o.level) {
        bail!(
            "--level must be {} to {} (older agents speak other messages)",
            jitgate_proto::LEVEL_QUIET_PINGS,
            jitgate_proto::PROTOCOL_LEVEL
        );
    }
    if o.agents == 0 || o.controllers == 0 || o.rate == 0 || o.seconds == 0 || o.ping == 0 {
        bail!("--agents, --controllers, --rate, --seconds and --ping-seconds must be positive");
    }
    if o.kill_one && o.controllers < 2 {
        bail!("--kill-one needs --controllers 2 or more (the agents move to another)");
    }
    Ok(o)
}

/// A `jit-controller run` child process.
struct Controller {
    child: Child,
    api: String,
    agent: String,
    /// Its stdout and stderr (removed with the state directory).
    log: PathBuf,
}

impl Controller {
    /// The first error lines of its log, for stderr: the log goes with the state directory.
    fn errors(&self, max: usize) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .take(max)
            .map(str::to_string)
            .collect()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn controller_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // target/release/examples/fleet_bench -> target/release/jit-controller
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("jit-controller"))
        .context("no target directory")?;
    if !bin.exists() {
        bail!(
            "{} not found: `cargo build --release --bins` first (cargo xtask bench fleet does)",
            bin.display()
        );
    }
    Ok(bin)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Rewrites the listeners of a state directory's controller.toml and appends `extra`.
fn configure(state: &Path, api: &str, agent: &str, extra: &str) -> Result<()> {
    let cfg = state.join("controller.toml");
    let text = std::fs::read_to_string(&cfg)?;
    let mut out = format!("listen = \"{api}\"\nagent_listen = \"{agent}\"\n");
    // Keys `extra` sets replace init's (TOML refuses duplicates).
    let replaced: Vec<&str> = extra
        .lines()
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .collect();
    for l in text.lines() {
        let key = l.split_once('=').map(|(k, _)| k.trim()).unwrap_or("");
        if !["listen", "agent_listen", "agent_endpoint", "metrics_listen"].contains(&key)
            && !replaced.contains(&key)
        {
            out.push_str(l);
            out.push('\n');
        }
    }
    out.push_str(extra);
    std::fs::write(&cfg, out)?;
    Ok(())
}

fn spawn_controller(bin: &Path, state: &Path, api: String, agent: String) -> Result<Controller> {
    let log_path = state.with_extension("log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(bin)
        .arg("--state-dir")
        .arg(state)
        .arg("run")
        .env("JIT_LOG", "warn")
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting jit-controller")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(&api).is_err() {
        if Instant::now() > deadline {
            bail!(
                "the controller at {api} did not start (see {})",
                state.with_extension("log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Controller {
        child,
        api,
        agent,
        log: log_path,
    })
}

/// Resident memory of a process, bytes.
fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPU time (user + system) of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            // After the command: state(0) ... utime(11) stime(12).
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .unwrap_or(0)
}

/// The postmaster and its children (the backends, the checkpointer, ...).
fn postgres_pids(postmaster: u32) -> Vec<u32> {
    let mut pids = vec![postmaster];
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else {
                continue;
            };
            let ppid = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')?
                        .1
                        .split_whitespace()
                        .nth(1)?
                        .parse::<u32>()
                        .ok()
                });
            if ppid == Some(postmaster) {
                pids.push(pid);
            }
        }
    }
    pids
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The `sent` key of an initiate: the agent's grant names its VM and source.
fn key_of(vm: usize, source: &str) -> String {
    format!("vm{vm}|{source}/32")
}

/// `--kill-one`: the controller killed, when, and how many agents it held.
struct Killed {
    after_s: f64,
    held: usize,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = parse_args()?;
    let bin = controller_bin()?;
    let tmp = tempfile::tempdir()?;
    eprintln!("PostgreSQL: a throwaway cluster ...");
    let pg = tokio::task::spawn_blocking(jitgate_testpg::Cluster::start).await??;
    let db = pg.create_database()?;
    let postmaster = pg.pid().context("PostgreSQL is not running")?;

    // Controllers: the first initialised, the others with a copy of its state directory.
    let mut addrs = Vec::new();
    for _ in 0..o.controllers {
        addrs.push((
            format!("127.0.0.1:{}", free_port()?),
            format!("127.0.0.1:{}", free_port()?),
        ));
    }
    let endpoints = addrs
        .iter()
        .map(|(_, a)| format!("\"{a}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let extra = format!(
        "agent_endpoints = [{endpoints}]\nmax_db_connections = 16\nagent_ping_seconds = {}\n",
        o.ping
    );
    let first = tmp.path().join("c0");
    let out = Command::new(&bin)
        .arg("--json")
        .arg("--state-dir")
        .arg(&first)
        .args(["init", "--database-url", &db.url, "--metrics-listen", "off"])
        .output()?;
    if !out.status.success() {
        bail!("init: {}", String::from_utf8_lossy(&out.stderr));
    }
    let init: Value = serde_json::from_slice(&out.stdout)?;
    let ca_pem = std::fs::read_to_string(init["caCertificate"].as_str().context("CA")?)?;
    let mut states = vec![first.clone()];
    for k in 1..o.controllers {
        let d = tmp.path().join(format!("c{k}"));
        let st = Command::new("cp").arg("-a").arg(&first).arg(&d).status()?;
        if !st.success() {
            bail!("copying the state directory");
        }
        states.push(d);
    }
    let mut ctls = Vec::new();
    for (state, (api, agent)) in states.iter().zip(&addrs) {
        configure(state, api, agent, &extra)?;
        ctls.push(spawn_controller(&bin, state, api.clone(), agent.clone())?);
    }

    // Inventory, policy and tokens through the library on the same database (as the
    // administration commands do).
    let app = App::open(&db.url, &DbOptions::default(), Parts::default()).await?;
    let local = Caller::local();
    eprintln!("inventory: {} VMs ...", o.agents);
    let t0 = Instant::now();
    app.inventory
        .add_group(&local, "fleet", "ops@example.com")
        .await?;
    for i in 0..o.agents {
        let addr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(
            198,
            18,
            (i >> 8) as u8,
            (i & 0xff) as u8,
        ));
        app.inventory
            .add_vm(&local, &format!("vm{i}"), "fleet", &[addr])
            .await?;
    }
    let policy: PolicyBody = serde_json::from_value(json!({"ports": [
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "198.18.0.0/15",
         "maxRequestAccessDuration": "PT3H"}]}))?;
    app.policies
        .put(&local, Target::Group("fleet"), &policy, None)
        .await?;
    let requester = app
        .tokens
        .create(&local, "bench", Role::Requester, &Scope::All, None, &[])
        .await?
        .1;
    let mut tokens = Vec::with_capacity(o.agents);
    for i in 0..o.agents {
        tokens.push(
            app.fleet
                .create_enroll_token(&local, &format!("vm{i}"))
                .await?
                .0,
        );
    }
    eprintln!("  done in {:.0}s", t0.elapsed().as_secs_f64());

    // Enrolment over HTTPS, one key for every simulated agent (their certificates differ).
    let http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes())?)
        .tls_built_in_root_certs(false)
        .build()?;
    let key = rcgen::KeyPair::generate()?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())?
        .serialize_request(&key)?
        .pem()?;
    eprintln!("enrolment: {} agents ...", o.agents);
    let t0 = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let tokens = Arc::new(tokens);
    let enrolled = Arc::new(Mutex::new(Vec::with_capacity(o.agents)));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (http, next, tokens, enrolled, csr) = (
            http.clone(),
            next.clone(),
            tokens.clone(),
            enrolled.clone(),
            csr.clone(),
        );
        let api = ctls[0].api.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(token) = tokens.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                let v: Value = http
                    .post(format!("https://{api}/api/v1/agents/enroll"))
                    .json(&json!({"token": token, "csrPem": csr}))
                    .send()
                    .await?
                    .error_for_status()?
                    .json()
                    .await?;
                let id = v["agentId"].as_str().context("agentId")?.parse()?;
                let cert_pem = v["certificatePem"].as_str().context("cert")?.to_string();
                let signing = v["grantSigningKeyPem"].as_str().context("key")?.to_string();
                if let Ok(mut e) = enrolled.lock() {
                    e.push((
                        Identity {
                            id,
                            vm: format!("vm{i}"),
                            cert_pem,
                            high_water: AtomicU64::new(0),
                        },
                        signing,
                    ));
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let enrolled: Vec<(Identity, String)> =
        std::mem::take(&mut *enrolled.lock().map_err(|_| anyhow::anyhow!("poisoned"))?);
    eprintln!("  done in {:.0}s", t0.elapsed().as_secs_f64());
    let signing_pem = enrolled
        .first()
        .map(|e| e.1.clone())
        .context("no agent enrolled")?;
    let shared = Arc::new(Shared {
        key_der: key.serialize_der(),
        ca_pem: ca_pem.clone(),
        signing: VerifyingKey::from_public_key_pem(&signing_pem)?,
        connected: AtomicUsize::new(0),
        grants: AtomicU64::new(0),
        bad_signatures: AtomicU64::new(0),
        sent: Mutex::new(HashMap::new()),
        acks: Mutex::new(Vec::new()),
        answer_pings: o.answer_pings,
        level: o.level,
        per_controller: (0..o.controllers).map(|_| AtomicUsize::new(0)).collect(),
        killed_at: Mutex::new(None),
        welcomed_after_kill: Mutex::new(Vec::new()),
    });

    // Connect the fleet, K controllers in turn; RSS before and after.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_before: Vec<u64> = ctls.iter().map(|c| rss(c.child.id())).collect();
    eprintln!("connecting {} agents ...", o.agents);
    let t0 = Instant::now();
    let failures = Arc::new(AtomicUsize::new(0));
    let endpoints: Arc<Vec<String>> = Arc::new(ctls.iter().map(|c| c.agent.clone()).collect());
    for (i, (who, _)) in enrolled.into_iter().enumerate() {
        tokio::spawn(keep_agent(
            shared.clone(),
            who,
            endpoints.clone(),
            i % ctls.len(),
            failures.clone(),
        ));
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while shared.connected.load(Ordering::Relaxed) < o.agents && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let connected = shared.connected.load(Ordering::Relaxed);
    let connect_s = t0.elapsed().as_secs_f64();
    eprintln!("  {connected} connected in {connect_s:.0}s");
    // Let the first status reports (spread over 10 s) and presence writes settle.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let rss_after: Vec<u64> = ctls.iter().map(|c| rss(c.child.id())).collect();

    // Idle: the keepalive's cost (pings every `--ping-seconds`, status reports every 10 s).
    eprintln!("idle for {} s ...", o.idle);
    let tps = ticks_per_second();
    let pg_pids = postgres_pids(postmaster);
    let sample = |ctls: &[Controller]| {
        (
            ctls.iter().map(|c| cpu_ticks(c.child.id())).sum::<u64>(),
            pg_pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>(),
            cpu_ticks(std::process::id()),
        )
    };
    let (c0, p0, g0) = sample(&ctls);
    let i0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(o.idle)).await;
    let (c1, p1, g1) = sample(&ctls);
    let idle_s = i0.elapsed().as_secs_f64();
    let core = |a: u64, b: u64| 100.0 * (b.saturating_sub(a)) as f64 / tps / idle_s;
    let (idle_ctl, idle_pg, idle_gen) = (core(c0, c1), core(p0, p1), core(g0, g1));

    // Load: R initiates a second through the controllers in turn, each for a random VM and a
    // source of its own, timed from just before the call to the agent's acknowledgement.
    eprintln!("load: {} initiates/s for {} s ...", o.rate, o.seconds);
    let (c0, p0, g0) = sample(&ctls);
    let http_lat = Arc::new(Mutex::new(Vec::new()));
    let errors = Arc::new(AtomicU64::new(0));
    let total = o.rate * o.seconds;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / o.rate as f64));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let l0 = Instant::now();
    let mut calls = Vec::with_capacity(total as usize);
    // Keys of initiates answered OK, and of those without an answer (the killed controller's).
    let answered = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let unanswered = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let mut kill: Option<Killed> = None;
    for n in 0..total {
        tick.tick().await;
        if o.kill_one && kill.is_none() && n == total / 3 {
            let held = shared.per_controller[0].load(Ordering::Relaxed);
            eprintln!(
                "  killing controller 1 of {} (holds {held} agents) ...",
                ctls.len()
            );
            ctls[0].child.kill()?;
            if let Ok(mut k) = shared.killed_at.lock() {
                *k = Some(Instant::now());
            }
            kill = Some(Killed {
                after_s: l0.elapsed().as_secs_f64(),
                held,
            });
        }
        let vm = rand::random::<u64>() as usize % o.agents;
        let source = format!(
            "198.{}.{}.{}",
            18 + ((n >> 16) & 1),
            (n >> 8) & 0xff,
            n & 0xff
        );
        if let Ok(mut m) = shared.sent.lock() {
            m.insert(key_of(vm, &source), Instant::now());
        }
        // Through the controllers in turn; once one is killed, through the others (as a
        // load balancer's health check would).
        let at = match kill {
            Some(_) => 1 + n as usize % (ctls.len() - 1),
            None => n as usize % ctls.len(),
        };
        let (http, api, token, lat, errors) = (
            http.clone(),
            ctls[at].api.clone(),
            requester.clone(),
            http_lat.clone(),
            errors.clone(),
        );
        let (answered, unanswered, key) =
            (answered.clone(), unanswered.clone(), key_of(vm, &source));
        calls.push(tokio::spawn(async move {
            let t = Instant::now();
            let r = http
                .post(format!(
                    "https://{api}/api/v1/jitNetworkAccessPolicies/default/initiate"
                ))
                .bearer_auth(&token)
                .json(
                    &json!({"virtualMachines": [{"id": format!("vm{vm}"), "ports": [
                    {"number": 22, "allowedSourceAddressPrefix": source, "duration": "PT1H"}]}],
                    "justification": "fleet bench"}),
                )
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => {
                    if let Ok(mut l) = lat.lock() {
                        l.push(t.elapsed().as_micros() as u64);
                    }
                    if let Ok(mut a) = answered.lock() {
                        a.insert(key);
                    }
                }
                Ok(r) => {
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!(
                            "  initiate: {} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        );
                    }
                }
                Err(e) => {
                    if let Ok(mut u) = unanswered.lock() {
                        u.insert(key);
                    }
                    if errors.fetch_add(1, Ordering::Relaxed) < 3 {
                        eprintln!("  initiate: {e}");
                    }
                }
            }
        }));
    }
    for c in calls {
        let _ = c.await;
    }
    let offered_s = l0.elapsed().as_secs_f64();
    // Acknowledgements still in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    while shared.sent.lock().map(|m| !m.is_empty()).unwrap_or(false) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load_s = l0.elapsed().as_secs_f64();
    let (c1, p1, g1) = sample(&ctls);
    let core_load = |a: u64, b: u64| 100.0 * (b.saturating_sub(a)) as f64 / tps / load_s;
    let left: Vec<String> = shared
        .sent
        .lock()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    let unacked = left.len();
    // A grant answered OK that never reached its agent is lost; an initiate without an
    // answer may or may not have committed before its controller died.
    let lost = answered
        .lock()
        .map(|a| left.iter().filter(|k| a.contains(*k)).count())
        .unwrap_or(0);
    let (unanswered_n, unanswered_acked) = unanswered
        .lock()
        .map(|u| (u.len(), u.iter().filter(|k| !left.contains(*k)).count()))
        .unwrap_or((0, 0));
    let mut acks = shared.acks.lock().map(|a| a.clone()).unwrap_or_default();
    acks.sort_unstable();
    let mut lat = http_lat.lock().map(|a| a.clone()).unwrap_or_default();
    lat.sort_unstable();
    let still = shared.connected.load(Ordering::Relaxed);

    let n = o.agents as f64;
    let per_agent: Vec<String> = rss_before
        .iter()
        .zip(&rss_after)
        .map(|(b, a)| {
            let per = a.saturating_sub(*b) as f64 * o.controllers as f64 / n / 1024.0;
            format!(
                "{per:.1} KiB ({:.0} → {:.0} MiB)",
                *b as f64 / 1048576.0,
                *a as f64 / 1048576.0
            )
        })
        .collect();
    println!(
        "{} simulated agents (protocol level {}, mutual TLS, one connection each) on {} controller(s), one PostgreSQL; release build; {} logical CPUs shared by the controllers, PostgreSQL and the load generator.\n",
        o.agents,
        o.level,
        o.controllers,
        std::thread::available_parallelism().map_or(0, |p| p.get())
    );
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| agents connected (held at the end) | {connected} ({still}); failed connection attempts {} |",
        failures.load(Ordering::Relaxed)
    );
    println!("| time to connect every agent | {connect_s:.1} s |");
    println!(
        "| controller RSS per connected agent | {} |",
        per_agent.join("; ")
    );
    println!(
        "| idle keepalive CPU ({} s; {} pings every {} s, status every {} s): controllers + PostgreSQL | {:.1} % + {:.1} % = {:.1} % of one core |",
        o.idle,
        if o.answer_pings {
            "answered"
        } else {
            "one-way"
        },
        jitgate_proto::ping_interval(Duration::from_secs(o.ping), o.level).as_secs_f64(),
        jitgate_proto::STATUS_REPORT_EVERY.as_secs(),
        idle_ctl,
        idle_pg,
        idle_ctl + idle_pg
    );
    println!("| idle: the load generator's own CPU | {idle_gen:.1} % of one core |");
    println!(
        "| per agent per second, idle (controllers + PostgreSQL) | {:.1} µs of CPU |",
        (idle_ctl + idle_pg) / 100.0 / n * 1e6
    );
    println!(
        "| load: initiates offered / answered OK / errors | {total} in {offered_s:.1} s / {} / {} |",
        lat.len(),
        errors.load(Ordering::Relaxed)
    );
    println!(
        "| floor: initiate HTTP latency p50 / p99 | {:.1} / {:.1} ms |",
        pct(&lat, 0.5),
        pct(&lat, 0.99)
    );
    println!(
        "| request → agent acknowledgement p50 / p99 | {:.1} / {:.1} ms |",
        pct(&acks, 0.5),
        pct(&acks, 0.99)
    );
    println!(
        "| p99 above the floor's p99 | {:+.1} ms |",
        pct(&acks, 0.99) - pct(&lat, 0.99)
    );
    println!(
        "| grants received / bad signatures / never acknowledged | {} / {} / {unacked} |",
        shared.grants.load(Ordering::Relaxed),
        shared.bad_signatures.load(Ordering::Relaxed)
    );
    match &kill {
        None => println!(
            "| CPU under load: controllers / PostgreSQL / generator | {:.0} % / {:.0} % / {:.0} % of one core |",
            core_load(c0, c1),
            core_load(p0, p1),
            core_load(g0, g1)
        ),
        Some(k) => {
            let mut moved = shared
                .welcomed_after_kill
                .lock()
                .map(|w| w.clone())
                .unwrap_or_default();
            moved.sort_unstable();
            let s = |v: f64| v / 1000.0;
            println!(
                "| failover: controller 1 of {} killed (SIGKILL) {:.1} s into the load, holding {} agents | welcomed elsewhere: {} agents; since the kill p50 / p99 / max {:.2} / {:.2} / {:.2} s (target ≤ 10 s) |",
                o.controllers,
                k.after_s,
                k.held,
                moved.len(),
                s(pct(&moved, 0.5)),
                s(pct(&moved, 0.99)),
                s(pct(&moved, 1.0))
            );
            println!(
                "| agents connected at the end | {} of {} |",
                shared.connected.load(Ordering::Relaxed),
                o.agents
            );
            println!(
                "| grants answered OK that never reached their agent (lost; target 0) | {lost} |"
            );
            println!(
                "| initiates without an answer (in flight at the killed controller) / of them acknowledged by their agent anyway (committed before the kill) | {unanswered_n} / {unanswered_acked} |"
            );
            println!(
                "| CPU under load: PostgreSQL / generator (the controllers' is not comparable: one was killed) | {:.0} % / {:.0} % of one core |",
                core_load(p0, p1),
                core_load(g0, g1)
            );
        }
    }
    for (i, c) in ctls.iter().enumerate() {
        for line in c.errors(5) {
            eprintln!("  controller {}: {line}", i + 1);
        }
    }
    drop(ctls);
    Ok(())
}
