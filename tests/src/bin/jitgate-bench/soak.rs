//! `jitgate-bench soak [--minutes N] [--seed S]` (run by `cargo xtask soak`; not in CI): the
//! real controller and one enrolled agent in namespaces, driven by a seeded random sequence
//! of steps — requests through the controller, revocations, short grants that expire, local
//! grants and revocations at the agent, SIGKILL and restart of the agent, kill and restart of
//! the controller. After each step, once the agent holds what the steps imply, the kernel's
//! verdicts for a grid of sources and ports (BPF_PROG_TEST_RUN of the same program object on
//! the agent's pinned maps) must equal the reference model's (`jitgate_tests::model`). The
//! first disagreement stops the run with the seed and step.

use crate::e2e::Api;
use jitgate_agent::{BootInstant, Dataplane, DataplaneOptions};
use jitgate_common::{OnExpiry, SourcePrefix};
use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::frames::{Frame, L4};
use jitgate_tests::model::{Model, ModelGrant, Verdict};
use serde_json::{Value, json};
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};
use time::OffsetDateTime;

const PORTS: [u16; 2] = [22, 3389];
/// An unprotected port: always admitted.
const OPEN_PORT: u16 = 8080;
const IDLE: Duration = Duration::from_secs(60);
/// Verdicts within this much of a grant's end are not judged (the model's end comes from
/// the wall clock, the kernel's from CLOCK_BOOTTIME).
const FUZZ: Duration = Duration::from_secs(2);

/// SplitMix64: small, seedable, the same sequence everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Sources the steps grant to (in the workstation's /24; written into maps only).
fn source(i: u64) -> String {
    match i {
        8 => "198.51.100.16/30".into(),
        i => format!("198.51.100.{}", 10 + i),
    }
}

/// Probe sources: every granted host, one inside the /30 only, one never granted.
const PROBES: [&str; 10] = [
    "198.51.100.10",
    "198.51.100.11",
    "198.51.100.12",
    "198.51.100.13",
    "198.51.100.14",
    "198.51.100.15",
    "198.51.100.16",
    "198.51.100.17",
    "198.51.100.19",
    "198.51.100.200",
];

#[derive(Clone, Debug)]
struct Expected {
    /// Controller request id or local grant id.
    id: String,
    controller: bool,
    port: u16,
    source: SourcePrefix,
    end: SystemTime,
}

/// Fields drop in order: the agent and controller before the namespaces.
struct Soak {
    agent: AgentProc,
    ctl: ControllerProc,
    api: Api,
    rt: tokio::runtime::Runtime,
    grants: Vec<Expected>,
    vm: IpAddr,
    _fleet: Fleet,
}

fn secs_until(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::now()) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

impl Soak {
    fn live(&self, margin: f64) -> impl Iterator<Item = &Expected> {
        self.grants
            .iter()
            .filter(move |g| secs_until(g.end) > margin)
    }

    fn request(&mut self, rng: &mut Rng) -> Result<String, String> {
        let port = PORTS[rng.below(2) as usize];
        let src = source(rng.below(9));
        let prefix: SourcePrefix = src.parse().map_err(|e| format!("{e:?}"))?;
        let secs = if rng.below(2) == 0 {
            5 + rng.below(16)
        } else {
            1800
        };
        let body = json!({"virtualMachines": [{"id": "vm-00", "ports": [{"number": port,
            "protocol": "TCP", "allowedSourceAddressPrefix": src, "duration": format!("PT{secs}S")}]}],
            "justification": "soak"});
        let v = self.rt.block_on(
            self.api
                .post("jitNetworkAccessPolicies/default/initiate", &body),
        )?;
        let id = v["id"].as_str().ok_or(format!("no id: {v}"))?.to_string();
        let end = v["virtualMachines"][0]["ports"][0]["endTimeUtc"]
            .as_str()
            .and_then(|s| {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .ok_or(format!("no endTimeUtc: {v}"))?;
        // A newer request for the same VM, port and source supersedes the older one's grant.
        self.grants
            .retain(|g| !(g.controller && g.port == port && g.source == prefix));
        self.grants.push(Expected {
            id: id.clone(),
            controller: true,
            port,
            source: prefix,
            end: end.into(),
        });
        Ok(format!("request {id}: {port}/tcp from {src} for {secs} s"))
    }

    fn revoke(&mut self, rng: &mut Rng) -> Result<String, String> {
        let live: Vec<usize> = (0..self.grants.len())
            .filter(|i| secs_until(self.grants[*i].end) > 3.0)
            .collect();
        if live.is_empty() {
            return Ok("revoke skipped (nothing live)".into());
        }
        let g = self
            .grants
            .remove(live[rng.below(live.len() as u64) as usize]);
        if g.controller {
            self.rt.block_on(self.api.revoke(&g.id))?;
        } else {
            self.agent.ok(&["revoke", &g.id]);
        }
        Ok(format!(
            "revoke {} {}: {}/tcp from {}",
            if g.controller { "request" } else { "local" },
            g.id,
            g.port,
            g.source
        ))
    }

    fn local(&mut self, rng: &mut Rng) -> Result<String, String> {
        let port = PORTS[rng.below(2) as usize];
        let src = source(rng.below(9));
        let secs = if rng.below(2) == 0 {
            5 + rng.below(16)
        } else {
            1800
        };
        let start = SystemTime::now();
        let ids = self.agent.grant(&[
            "--port",
            &format!("{port}/tcp"),
            "--source",
            &src,
            "--duration",
            &format!("{secs}s"),
        ]);
        let id = ids.first().ok_or("grant printed no id")?.trim().to_string();
        self.grants.push(Expected {
            id: id.clone(),
            controller: false,
            port,
            source: src.parse().map_err(|e| format!("{e:?}"))?,
            end: start + Duration::from_secs(secs),
        });
        Ok(format!(
            "local grant {id}: {port}/tcp from {src} for {secs} s"
        ))
    }

    /// Waits until the agent holds exactly the expected grants (those not about to end).
    fn converge(&self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (want, have) = self.compare();
            if want == have {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the agent did not converge in 90 s:\n  expected {want:?}\n  agent    {have:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// (expected, agent) grant scopes ending more than 4 s from now, sorted.
    fn compare(&self) -> (Vec<String>, Vec<String>) {
        let mut want: Vec<String> = self
            .live(4.0)
            .map(|g| format!("{}/{}/{}", g.port, g.source, g.controller))
            .collect();
        let o = self.agent.cli(&["grants", "--json"]);
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        let boot_now = BootInstant::now().0;
        let mut have: Vec<String> = v["grants"]["grants"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter(|g| g["expiresBootNs"].as_u64().unwrap_or(0) > boot_now + 4_000_000_000)
            .map(|g| {
                format!(
                    "{}/{}/{}",
                    g["port"],
                    g["source"].as_str().unwrap_or(""),
                    g["origin"] == "controller"
                )
            })
            .collect();
        want.sort();
        have.sort();
        (want, have)
    }

    /// Runs every probe through the program on the agent's pinned maps and compares with the
    /// model; returns (compared, skipped near an end).
    fn check(&self) -> Result<(usize, usize), String> {
        let mut opts = DataplaneOptions::new(&self.agent.pin_dir);
        opts.flow_idle_timeout = IDLE;
        let mut dp = Dataplane::open(&opts).map_err(|e| e.to_string())?;
        let mut model = Model::new(IDLE.as_nanos() as u64);
        for p in PORTS {
            model.protected.insert((6, p), OnExpiry::Keep);
        }
        for g in &self.grants {
            model.grants.push(ModelGrant {
                proto: 6,
                port: g.port,
                source: g.source,
                expires_ns: BootInstant::from_utc(g.end).0,
            });
        }
        let fuzz = FUZZ.as_nanos() as u64;
        let (mut compared, mut skipped) = (0, 0);
        for (i, src) in PROBES.iter().enumerate() {
            for port in [PORTS[0], PORTS[1], OPEN_PORT] {
                let f = Frame::new(
                    src,
                    &self.vm.to_string(),
                    L4::Tcp {
                        sport: 40000 + i as u16,
                        dport: port,
                        flags: 0x02,
                    },
                )
                .build();
                let t0 = BootInstant::now().0;
                let r = dp.test_run(&f, 1).map_err(|e| e.to_string())?;
                let t1 = BootInstant::now().0;
                let (early, _) = model.step(&f, t0.saturating_sub(fuzz));
                let (late, _) = model.step(&f, t1 + fuzz);
                if early != late {
                    skipped += 1;
                    continue;
                }
                let kernel = if r.action == jitgate_agent::XDP_PASS {
                    Verdict::Pass
                } else {
                    Verdict::Drop
                };
                if kernel != early {
                    return Err(format!(
                        "SYN from {src} to {port}/tcp: kernel {kernel:?}, model {early:?}"
                    ));
                }
                compared += 1;
            }
        }
        Ok((compared, skipped))
    }
}

pub fn run(args_in: &[String]) {
    let arg = |name: &str| {
        args_in
            .iter()
            .position(|a| a == name)
            .and_then(|i| args_in.get(i + 1))
            .map(|v| {
                v.parse::<u64>()
                    .unwrap_or_else(|_| panic!("{name} takes a number, not {v:?}"))
            })
    };
    let minutes = arg("--minutes").unwrap_or(10);
    let seed = arg("--seed").unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("soak: seed {seed}, {minutes} min (reproduce with --seed {seed})");
    let fleet = Fleet::new(1).expect("fleet");
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let token = ctl.add_vm("vm-00", fleet.vms[0].v4);
    let o = ctl.jit(
        &fleet.ws,
        &args("policy set --resource-group prod --port 22/tcp --port 3389/tcp --source 198.51.100.0/24 --max 3h"),
    );
    assert!(o.status.success(), "policy set: {o:?}");
    let agent = AgentProc::start_enrolled(
        &fleet.vms[0].ns,
        &args("--interface eth0 --protect 22/tcp --protect 3389/tcp --flow-idle-timeout 60s"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    let api = Api::new(&ctl);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let vm = fleet.vms[0].v4;
    let ws = Fleet::ns_path(&fleet.ws);
    let mut s = Soak {
        agent,
        ctl,
        api,
        rt,
        grants: Vec::new(),
        vm,
        _fleet: fleet,
    };
    let mut rng = Rng(seed);
    let end = Instant::now() + Duration::from_secs(minutes * 60);
    let mut counts = std::collections::BTreeMap::<&str, usize>::new();
    let (mut compared, mut skipped, mut step) = (0usize, 0usize, 0usize);
    // The HTTPS calls come from the workstation's namespace.
    let result = jitgate_agent::netns::run_in(&ws, || {
        while Instant::now() < end {
            step += 1;
            let kind = match rng.below(12) {
                0..=3 => "request",
                4..=5 => "revoke",
                6..=7 => "local grant",
                8 => "wait",
                9 => "agent kill -9",
                10 => "agent kill -9 with a request meanwhile",
                _ => "controller restart",
            };
            *counts.entry(kind).or_default() += 1;
            let what = match kind {
                "request" => s.request(&mut rng),
                "revoke" => s.revoke(&mut rng),
                "local grant" => s.local(&mut rng),
                "wait" => {
                    let ms = 500 + rng.below(5000);
                    std::thread::sleep(Duration::from_millis(ms));
                    Ok(format!("wait {ms} ms"))
                }
                "agent kill -9" => {
                    s.agent.restart();
                    Ok("agent killed (SIGKILL) and restarted".into())
                }
                "agent kill -9 with a request meanwhile" => {
                    s.agent.kill();
                    let r = s.request(&mut rng);
                    s.agent.spawn();
                    r.map(|r| format!("agent killed; {r}; agent restarted"))
                }
                _ => {
                    s.ctl.kill();
                    std::thread::sleep(Duration::from_millis(rng.below(2000)));
                    s.ctl.spawn();
                    // A fresh client: the old one's pooled connection died with the process.
                    s.api = Api::new(&s.ctl);
                    Ok("controller killed and restarted".into())
                }
            };
            let what = what.map_err(|e| format!("step {step} ({kind}): {e}"))?;
            s.converge()
                .map_err(|e| format!("step {step} ({what}): {e}"))?;
            let (c, k) = s
                .check()
                .map_err(|e| format!("step {step} ({what}): {e}"))?;
            compared += c;
            skipped += k;
            eprintln!("soak step {step}: {what}; {c} verdicts agree");
            // Forget what ended long ago.
            s.grants.retain(|g| secs_until(g.end) > -10.0);
        }
        let verify = s.rt.block_on(s.api.get("activityLog/verify"))?;
        if verify["ok"] != true {
            return Err(format!("the activity log does not verify: {verify}"));
        }
        Ok::<_, String>(())
    });
    let outcome = match result {
        Ok(Ok(())) => "no disagreement".to_string(),
        Ok(Err(e)) => format!("FAILED at {e}"),
        Err(e) => format!("FAILED: {e}"),
    };
    println!(
        "Soak {} (seed {seed}, {minutes} min): {step} steps, {compared} verdicts compared with the model ({skipped} skipped within {} s of a grant's end); {outcome}.",
        super::chrono_date(),
        FUZZ.as_secs()
    );
    let mix: Vec<String> = counts.iter().map(|(k, n)| format!("{k} {n}")).collect();
    println!("Steps: {}.", mix.join(", "));
    assert!(
        outcome == "no disagreement",
        "soak: {outcome} (seed {seed})"
    );
}
