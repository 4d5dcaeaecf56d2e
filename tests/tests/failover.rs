//! Several controllers on one PostgreSQL, with real agents in namespaces (docs/ha.md, "Agent
//! failover"): two `jit-controller` processes share a throwaway PostgreSQL cluster (reached
//! over its unix socket from the workstation namespace); each real agent, enrolled through a
//! different controller, is connected to that one. A request made through one controller
//! opens SSH on the other's agent; a killed controller's agent is served by the other within
//! 10 s, and so are the agents of a frozen controller and of one cut off from the network;
//! the expiry sweep and checkpoints go on; nothing is lost or duplicated, and the activity log
//! verifies.

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::{ControllerProc, Ports};
use jitgate_tests::fleet::{Fleet, Sshd, WS_V4};
use jitgate_tests::{ok, require_root, wait_until};
use std::time::{Duration, Instant};

const A: Ports = Ports {
    api: 8443,
    agent: 8444,
    metrics: 9465,
};
const B: Ports = Ports {
    api: 9443,
    agent: 9444,
    metrics: 9466,
};

/// The failover target of the issue (a controller's agents served elsewhere within 10 s).
const FAILOVER: Duration = Duration::from_secs(10);

/// How many times `agent`'s log says its channel came up to the controller at `agent_port`.
fn ups(agent: &AgentProc, agent_port: u16) -> usize {
    let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
    let needle = format!("{WS_V4}:{agent_port}");
    log.lines()
        .filter(|l| l.contains("controller channel up") && l.contains(&needle))
        .count()
}

/// Waits until `agent` has come up on the controller at `agent_port` more than `before`
/// times; returns how long that took.
fn moved(agent: &AgentProc, agent_port: u16, before: usize, since: Instant) -> Option<Duration> {
    wait_until(Duration::from_secs(30), || ups(agent, agent_port) > before).then(|| since.elapsed())
}

/// The status and its reason of request `id` of `vm`, as `jit history` shows it through
/// `ctl` (`Revoked/Expired` once the expiry sweep ended it).
fn status_of(ctl: &ControllerProc, ws: &str, vm: &str, id: &str) -> String {
    let h = ctl.jit_json(ws, &args(&format!("history {vm} --json")));
    h.as_array()
        .or_else(|| h["value"].as_array())
        .into_iter()
        .flatten()
        .find(|r| r["id"] == id)
        .map(|r| {
            let port = &r["virtualMachines"][0]["ports"][0];
            format!(
                "{}/{}",
                r["status"].as_str().unwrap_or_default(),
                port["statusReason"].as_str().unwrap_or_default()
            )
        })
        .unwrap_or_default()
}

/// Applies an nftables ruleset in namespace `ns`.
fn nft(ns: &str, rules: &str) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "nft", rules])
        .output()
        .expect("nft");
    assert!(
        out.status.success(),
        "nft {rules}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn request(ctl: &ControllerProc, ws: &str, vm: &str, why: &str) -> serde_json::Value {
    ctl.jit_json(
        ws,
        &args(&format!(
            "request {vm} --port 22 --duration 10m --justification {why} --wait --json"
        )),
    )
}

#[test]
fn agents_move_to_another_controller_when_theirs_is_killed_or_frozen() {
    if !require_root() {
        return;
    }
    let pg = jitgate_testpg::Cluster::start().expect("a throwaway PostgreSQL cluster");
    let db = pg.create_database().expect("database");
    let fleet = Fleet::new(2).expect("fleet");
    let (vm1, vm2) = (&fleet.vms[0], &fleet.vms[1]);
    let (sshd1, sshd2) = (
        Sshd::start(&vm1.ns).expect("sshd 1"),
        Sshd::start(&vm2.ns).expect("sshd 2"),
    );
    let cluster = format!(
        "agent_endpoints = [\"{WS_V4}:{}\", \"{WS_V4}:{}\"]\nleader_lease_seconds = 3\n\
         checkpoint_interval_seconds = 1\nexpiry_sweep_seconds = 1\n",
        A.agent, B.agent
    );
    let mut a =
        ControllerProc::start_at(&fleet.ws, WS_V4, A, &["--database-url", &db.url], &cluster);
    let b = a.another(WS_V4, B);
    let (t1, t2) = (a.add_vm("vm-01", vm1.v4), a.add_vm("vm-02", vm2.v4));
    ok(
        a.jit(&fleet.ws, &args("policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 --max 3h --on-expiry cut")),
        "policy set",
    );
    let agent_args = args("--interface eth0 --protect 22/tcp:keep --audit-checkpoint-interval 1s");
    // Each enrolled through a different controller, so each starts on that one.
    let agent1 = AgentProc::start_enrolled(&vm1.ns, &agent_args, &a.api, &a.ca, &t1);
    let agent2 = AgentProc::start_enrolled(&vm2.ns, &agent_args, &b.api, &b.ca, &t2);
    assert!(
        wait_until(Duration::from_secs(15), || ups(&agent1, A.agent) == 1
            && ups(&agent2, B.agent) == 1),
        "agents not up on their own controllers: {} {}",
        std::fs::read_to_string(&agent1.log).unwrap_or_default(),
        std::fs::read_to_string(&agent2.log).unwrap_or_default()
    );
    // The enrolment and the first connection told each agent both controllers.
    // (The agent saves the list after its channel is up: wait for the file, not only for that.)
    for agent in [&agent1, &agent2] {
        let saved = || {
            std::fs::read_to_string(agent.state_dir.join("controllers.json")).unwrap_or_default()
        };
        assert!(
            wait_until(Duration::from_secs(10), || {
                let s = saved();
                s.contains(&format!("{WS_V4}:{}", A.agent))
                    && s.contains(&format!("{WS_V4}:{}", B.agent))
            }),
            "{}",
            saved()
        );
    }
    for agent in [&agent1, &agent2] {
        assert!(
            wait_until(Duration::from_secs(10), || agent
                .ok(&["status"])
                .contains("22/tcp:cut")),
            "the policy did not reach an agent"
        );
    }

    // A request made through A opens SSH on vm-02, whose agent is connected to B.
    let r = request(&a, &fleet.ws, "vm-02", "through-a");
    assert!(r.to_string().contains("Applied"), "{r}");
    let o = sshd2.ssh(&fleet.ws, vm2.v4, "true", 5).expect("ssh");
    assert!(o.status.success(), "ssh to vm-02 after a request through A");

    // SIGKILL A: its agent is served by B within 10 s, and B serves a new request for it.
    let before = ups(&agent1, B.agent);
    let killed = Instant::now();
    a.kill();
    let took = moved(&agent1, B.agent, before, killed);
    eprintln!("failover after SIGKILL: {took:?}");
    assert!(
        took.is_some_and(|t| t <= FAILOVER),
        "vm-01's agent was not served by B within {FAILOVER:?} of A's death (took {took:?})"
    );
    let r = request(&b, &fleet.ws, "vm-01", "after-kill");
    assert!(r.to_string().contains("Applied"), "{r}");
    let o = sshd1.ssh(&fleet.ws, vm1.v4, "true", 5).expect("ssh");
    assert!(o.status.success(), "ssh to vm-01 through B after A died");
    // The once-per-cluster work goes on without A: B (now the leader) ends a short request.
    let short = b.jit_json(
        &fleet.ws,
        &args("request vm-02 --port 22 --duration 3s --justification sweep-check --wait --json"),
    );
    let short_id = short["id"].as_str().unwrap_or_default().to_string();
    assert!(!short_id.is_empty(), "{short}");
    assert!(
        wait_until(Duration::from_secs(20), || status_of(
            &b, &fleet.ws, "vm-02", &short_id
        ) == "Revoked/Expired"),
        "the short request did not expire with A dead: {}",
        status_of(&b, &fleet.ws, "vm-02", &short_id)
    );

    // A comes back; both agents stay on B. Freeze B (SIGSTOP: its kernel still accepts
    // connections, nothing answers): both agents are served by A within 10 s.
    a.spawn();
    let before = (ups(&agent1, A.agent), ups(&agent2, A.agent));
    let frozen = Instant::now();
    assert!(b.signal("STOP"), "SIGSTOP B");
    let t1 = moved(&agent1, A.agent, before.0, frozen);
    let t2 = moved(&agent2, A.agent, before.1, frozen);
    eprintln!("failover from a frozen controller: {t1:?} {t2:?}");
    let r = request(&a, &fleet.ws, "vm-02", "while-b-frozen");
    assert!(b.signal("CONT"), "SIGCONT B");
    assert!(
        t1.is_some_and(|t| t <= FAILOVER) && t2.is_some_and(|t| t <= FAILOVER),
        "agents of a frozen controller not moved within {FAILOVER:?}: {t1:?} {t2:?}"
    );
    assert!(r.to_string().contains("Applied"), "{r}");
    // `jit-agent status` names the controller in use.
    for agent in [&agent1, &agent2] {
        let st = agent.ok(&["status"]);
        assert!(
            st.contains(&format!("controller     {WS_V4}:{}", A.agent)),
            "{st}"
        );
    }

    // A's agent channel cut off in the network (every packet to and from it dropped in the
    // workstation namespace; the process runs on): both agents are served by B within 10 s.
    let before = (ups(&agent1, B.agent), ups(&agent2, B.agent));
    let cut = Instant::now();
    nft(
        &fleet.ws,
        &format!(
            "add table inet cut; \
             add chain inet cut i {{ type filter hook input priority 0; }}; \
             add rule inet cut i tcp dport {p} drop; \
             add chain inet cut o {{ type filter hook output priority 0; }}; \
             add rule inet cut o tcp sport {p} drop",
            p = A.agent
        ),
    );
    let t1 = moved(&agent1, B.agent, before.0, cut);
    let t2 = moved(&agent2, B.agent, before.1, cut);
    eprintln!("failover from a controller cut off: {t1:?} {t2:?}");
    nft(&fleet.ws, "delete table inet cut");
    assert!(
        t1.is_some_and(|t| t <= FAILOVER) && t2.is_some_and(|t| t <= FAILOVER),
        "agents of a cut-off controller not moved within {FAILOVER:?}: {t1:?} {t2:?}"
    );
    let r = request(&a, &fleet.ws, "vm-01", "after-cut");
    assert!(r.to_string().contains("Applied"), "{r}");

    // Nothing lost or duplicated: every request once in the history.
    let text = ["vm-01", "vm-02"]
        .map(|vm| {
            a.jit_json(&fleet.ws, &args(&format!("history {vm} --json")))
                .to_string()
        })
        .join("\n");
    for why in [
        "through-a",
        "after-kill",
        "sweep-check",
        "while-b-frozen",
        "after-cut",
    ] {
        assert_eq!(
            text.matches(why).count(),
            1,
            "request {why} not exactly once in the history: {text}"
        );
    }
    // The activity log, written by both controllers, verifies, with signed checkpoints
    // (the leader's, every second here) covering it. `audit verify` exits non-zero unless
    // the chain and every checkpoint verify.
    let mut verify = serde_json::Value::Null;
    let covered = wait_until(Duration::from_secs(15), || {
        let out = ok(
            a.jit(&fleet.ws, &args("audit verify --json")),
            "audit verify",
        );
        verify = serde_json::from_str(&out).unwrap_or_default();
        verify["ok"] == true
            && verify["checkpoints"].as_u64() >= Some(1)
            && verify["uncovered"].as_u64() == Some(0)
    });
    assert!(covered, "{verify}");
    drop(b);
}
