//! The whole system in namespaces: the real controller, enrolled agents on VMs running a real
//! sshd each, and an operator using the `jit` CLI from a workstation.

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, Sshd, WS_V4};
use jitgate_tests::{ok, require_root, wait_until};
use std::time::{Duration, Instant};

#[test]
fn request_ssh_revoke_through_the_controller() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(2).expect("fleet");
    let vm = &fleet.vms[0];
    let sshd = Sshd::start(&vm.ns).expect("sshd");
    let (vm2, sshd2) = (
        &fleet.vms[1],
        Sshd::start(&fleet.vms[1].ns).expect("sshd 2"),
    );
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let token = ctl.add_vm("vm-01", vm.v4);
    let token2 = ctl.add_vm("vm-02", vm2.v4);

    // Policy from the controller: 22/tcp from the workstation's network, cut at expiry.
    ok(
        ctl.jit(&fleet.ws, &args("policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 --max 3h --on-expiry cut")),
        "policy set",
    );
    let agent = AgentProc::start_enrolled(
        &vm.ns,
        &args("--interface eth0 --protect 22/tcp:keep --audit-checkpoint-interval 1s"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    // The token cannot be used twice.
    let again = std::process::Command::new("ip")
        .args(["netns", "exec", &vm.ns])
        .arg(jitgate_tests::agent::agent_bin())
        .args(["enroll", "--controller", &ctl.api, "--ca"])
        .arg(&ctl.ca)
        .args(["--token", &token, "--state-dir", "/tmp/jitgate-never-used"])
        .output()
        .unwrap();
    assert!(!again.status.success(), "an enrolment token worked twice");
    assert!(
        wait_until(Duration::from_secs(10), || agent
            .ok(&["status"])
            .contains("22/tcp:cut")),
        "the signed policy did not reach the agent: {}",
        agent.ok(&["status"])
    );
    assert!(
        !sshd
            .ssh(&fleet.ws, vm.v4, "true", 2)
            .unwrap()
            .status
            .success(),
        "ssh open before any request"
    );

    // Request with "My IP" and wait until the agent applied it.
    let t0 = Instant::now();
    let req = ctl.jit_json(
        &fleet.ws,
        &args("request vm-01 --port 22 --duration 10m --justification e2e-test --wait --json"),
    );
    let applied_in = t0.elapsed();
    let text = req.to_string();
    assert!(text.contains("Applied"), "{text}");
    let o = sshd
        .ssh(&fleet.ws, vm.v4, "echo via-controller", 5)
        .unwrap();
    assert!(
        o.status.success(),
        "ssh after Applied: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "via-controller");
    eprintln!("request → Applied in {applied_in:?}");

    // The second VM, with its own agent: vm-01's grant opens nothing there; its own short
    // request opens it, and it closes again at the end time.
    let agent2 = AgentProc::start_enrolled(
        &vm2.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token2,
    );
    assert!(
        wait_until(Duration::from_secs(10), || agent2
            .ok(&["status"])
            .contains("22/tcp:cut")),
        "the policy did not reach vm-02"
    );
    let ssh2 = |t: u32| {
        sshd2
            .ssh(&fleet.ws, vm2.v4, "true", t)
            .unwrap()
            .status
            .success()
    };
    assert!(!ssh2(2), "vm-01's grant opened vm-02");
    ok(
        ctl.jit(
            &fleet.ws,
            &args("request vm-02 --port 22 --duration 4s --justification short --wait"),
        ),
        "request vm-02",
    );
    assert!(ssh2(3), "ssh to vm-02 after its own request");
    assert!(
        wait_until(Duration::from_secs(8), || !ssh2(1)),
        "vm-02 still open after the end time"
    );
    drop(agent2);

    // The grant on the agent came from the controller, with the operator as requester.
    let grants = agent.grants_json();
    let g = &grants["grants"]["grants"][0];
    assert_eq!(g["origin"], "controller", "{grants}");
    assert_eq!(g["source"], format!("{WS_V4}/32"), "{grants}");

    // A live session, then a longer request for the same source (an extension): the new
    // grant supersedes the old one and the session survives the hand-over.
    let mut session = sshd.session(&fleet.ws, vm.v4, "sleep 60").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let ext = ctl.jit_json(
        &fleet.ws,
        &args("request vm-01 --port 22 --duration 20m --justification extend --wait --json"),
    );
    let id = ext["id"].as_str().expect("request id").to_string();
    assert!(
        wait_until(Duration::from_secs(5), || agent.grant_count() == 1),
        "the superseded grant was not removed: {}",
        agent.grants_json()
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        session.try_wait().unwrap().is_none(),
        "the extension cut the live session"
    );
    let history = ok(ctl.jit(&fleet.ws, &args("history vm-01 --json")), "history");
    assert!(history.contains("NewerRequestInitiated"), "{history}");

    // Revoke through the controller: the session and new access end within seconds.
    ok(ctl.jit(&fleet.ws, &["revoke", &id]), "revoke");
    assert!(
        wait_until(Duration::from_secs(3), || !sshd
            .ssh(&fleet.ws, vm.v4, "true", 1)
            .unwrap()
            .status
            .success()),
        "ssh still works after revoke"
    );
    assert!(
        wait_until(Duration::from_secs(5), || agent.grant_count() == 0),
        "grant not removed on the agent"
    );

    // The controller's connection history: the SSH sessions, from the workstation, under the
    // requests, with the caller; and (with --denied) the attempt before any request.
    let conns = |extra: &str| -> Vec<serde_json::Value> {
        ctl.jit_json(
            &fleet.ws,
            &args(&format!("connections vm-01 --json {extra}")),
        )
        .as_array()
        .cloned()
        .unwrap_or_default()
    };
    let first_id = req["id"].as_str().expect("request id").to_string();
    assert!(
        wait_until(Duration::from_secs(10), || conns("").iter().any(
            |c| c["requestId"] == first_id.as_str() && c["outcome"] == "admitted"
        )),
        "the first session is not in the connection history: {:?}",
        conns("")
    );
    let admitted = conns("");
    let c = admitted
        .iter()
        .find(|c| c["requestId"] == first_id.as_str())
        .expect("admitted");
    assert!(
        c["source"]
            .as_str()
            .is_some_and(|s| s.starts_with(&format!("{WS_V4}:"))),
        "{c}"
    );
    assert_eq!(c["port"], 22, "{c}");
    assert_eq!(c["justification"], "e2e-test", "{c}");
    assert_eq!(c["grantOrigin"], "controller", "{c}");
    let me = ctl.jit_json(&fleet.ws, &args("whoami --json"));
    assert_eq!(c["requestor"], me["displayName"], "{c} vs {me}");
    assert!(
        admitted.iter().all(|c| c["outcome"] == "admitted"),
        "denied attempts listed without --denied"
    );
    let all = conns("--denied");
    assert!(
        all.iter().any(|c| c["outcome"] == "denied"
            && c["reason"].is_string()
            && c["source"]
                .as_str()
                .is_some_and(|s| s.starts_with(&format!("{WS_V4}:")))),
        "the refused attempt before the request is not listed: {all:?}"
    );
    let csv = ok(
        ctl.jit(&fleet.ws, &args("connections vm-01 --csv")),
        "connections --csv",
    );
    assert!(
        csv.starts_with("timeUtc,virtualMachine,outcome,source,protocol,port,requestor,requestId,"),
        "{csv}"
    );
    assert!(csv.contains(&first_id), "{csv}");
    let records = ctl.jit_json(
        &fleet.ws,
        &args("audit --agent --vm vm-01 --kind grant.applied --json"),
    );
    let kinds: Vec<&str> = records
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["record"]["kind"].as_str())
        .collect();
    assert!(
        kinds.len() >= 2 && kinds.iter().all(|k| *k == "grant.applied"),
        "{records}"
    );

    // The agent's audit records reached the controller; the fleet view shows it online.
    let agents = ok(ctl.jit(&fleet.ws, &args("agents --json")), "agents");
    assert!(agents.contains("vm-01"), "{agents}");
    let audit = agent.ok(&["audit", "--json"]);
    assert!(
        audit.contains("grant.applied") && audit.contains("grant.revoked"),
        "{audit}"
    );

    // The agent signs its chain head with its enrolment key; the signed checkpoints reach
    // the controller, which verifies them (and the chain) against the agent's certificate.
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            last = ok(
                ctl.jit(&fleet.ws, &args("audit --agent --vm vm-01 verify --json")),
                "agent audit verify",
            );
            serde_json::from_str::<serde_json::Value>(&last).is_ok_and(|v| {
                v["ok"] == true && v["agents"][0]["checkpoints"].as_i64().unwrap_or(0) >= 1
            })
        }),
        "no verified agent checkpoint at the controller: {last}"
    );
    let v = agent.ok(&["audit", "verify"]);
    assert!(
        v.contains("verifies") && !v.contains(" 0 signed checkpoints"),
        "{v}"
    );

    // A local break-glass grant on the host: the session under it is in the controller's
    // connection history too, attributed to the local actor, with the connection limit the
    // agent reported as soon as the grant was made (no reconnection in between).
    let local = agent.grant(&args(&format!(
        "--port 22 --source {WS_V4} --duration 1m --justification break-glass --max-connections 3"
    )));
    let o = sshd.ssh(&fleet.ws, vm.v4, "true", 5).unwrap();
    assert!(o.status.success(), "ssh under a local grant");
    assert!(
        wait_until(Duration::from_secs(10), || conns("").iter().any(
            |c| c["grantId"] == local[0].as_str()
                && c["grantOrigin"] == "local"
                && c["maxConnections"] == 3
                && c["requestor"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("local:"))
        )),
        "the break-glass session is not attributed: {:?}",
        conns("")
    );
    agent.ok(&["revoke", &local[0]]);

    // Decommissioning: the agent's credential is revoked. Its live connection is closed, it is
    // refused when it dials again, and nothing the controller grants from then on reaches it.
    ctl.admin(&["vm", "revoke-agent", "vm-01"]);
    assert!(
        wait_until(Duration::from_secs(15), || ctl
            .log_text()
            .contains("(VM vm-01) is revoked")),
        "the revoked agent was not refused:\n{}",
        ctl.log_text()
    );
    // The agent (level 9) was told why: it logs the reason and `jit-agent status` shows it.
    assert!(
        wait_until(Duration::from_secs(15), || agent.log_text().contains(
            "the controller closed the connection: revoked by the controller"
        )),
        "the agent does not say why it was closed:\n{}",
        agent.log_text()
    );
    let status = agent.ok(&["status"]);
    assert!(
        status.contains("closed         revoked by the controller"),
        "{status}"
    );
    let fleet_view = ok(ctl.jit(&fleet.ws, &args("agents --json")), "agents");
    assert!(fleet_view.contains("\"revoked\""), "{fleet_view}");
    let late = ctl.jit_json(
        &fleet.ws,
        &args("request vm-01 --port 22 --duration 10m --justification after-revoke --json"),
    );
    std::thread::sleep(Duration::from_secs(3));
    let shown = ctl.jit_json(
        &fleet.ws,
        &["show", late["id"].as_str().expect("id"), "--json"],
    );
    assert_eq!(shown["status"], "Initiated", "{shown}");
    assert_eq!(agent.grant_count(), 0, "{}", agent.grants_json());
    assert!(
        !sshd
            .ssh(&fleet.ws, vm.v4, "true", 2)
            .unwrap()
            .status
            .success(),
        "ssh open through a revoked agent"
    );
    let log = ok(
        ctl.jit(&fleet.ws, &args("audit --vm vm-01 --json")),
        "audit",
    );
    assert!(log.contains("Revoke Agent"), "{log}");
}

/// Faults: the agent killed while a grant is revoked converges on reconnect; the controller
/// killed leaves enforcement and grants untouched and the agent reconnects to the new one; a
/// grant ends on time while the VM's link is down.
#[test]
fn faults_converge() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let sshd = Sshd::start(&vm.ns).expect("sshd");
    let mut ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let token = ctl.add_vm("vm-01", vm.v4);
    ok(
        ctl.jit(
            &fleet.ws,
            &args(
                "policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 --max 3h",
            ),
        ),
        "policy",
    );
    let mut agent = AgentProc::start_enrolled(
        &vm.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    let ssh_ok = || {
        sshd.ssh(&fleet.ws, vm.v4, "true", 2)
            .unwrap()
            .status
            .success()
    };

    // 1. Agent down while the controller revokes: the kernel keeps the grant meanwhile, and
    //    reconciliation removes it when the agent is back.
    let r = ctl.jit_json(
        &fleet.ws,
        &args("request vm-01 --port 22 --duration 30m --justification f1 --wait --json"),
    );
    assert!(ssh_ok());
    agent.kill();
    assert!(ssh_ok(), "enforcement state lost with the agent");
    ok(
        ctl.jit(&fleet.ws, &["revoke", r["id"].as_str().unwrap()]),
        "revoke while the agent is down",
    );
    agent.restart();
    assert!(
        wait_until(Duration::from_secs(15), || !ssh_ok()),
        "revocation did not converge after the agent restarted"
    );
    assert_eq!(agent.grant_count(), 0);

    // 2. Controller down: an applied grant keeps working; a new controller process takes over.
    ok(
        ctl.jit(
            &fleet.ws,
            &args("request vm-01 --port 22 --duration 30m --justification f2 --wait"),
        ),
        "request",
    );
    ctl.kill();
    assert!(ssh_ok(), "access lost with the controller");
    ctl.spawn();
    let r = ctl.jit_json(
        &fleet.ws,
        &args(
            "request vm-01 --port 22 --duration 3s --justification f3 --wait --timeout 60s --json",
        ),
    );
    assert!(r.to_string().contains("Applied"), "{r}");

    // 3. Link down: the 3 s grant (which superseded the 30 min one: same port and source)
    //    ends on time in the kernel while the VM is cut off; when the link is back, SSH is
    //    refused, and a new request goes through the recovered channel.
    jitgate_tests::netns::ips(&format!("-n {} link set eth0 down", vm.ns)).unwrap();
    std::thread::sleep(Duration::from_secs(4));
    jitgate_tests::netns::ips(&format!("-n {} link set eth0 up", vm.ns)).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || agent.grant_count() == 0),
        "{}",
        agent.grants_json()
    );
    assert!(!ssh_ok(), "the ended grant still admits");
    ok(
        ctl.jit(
            &fleet.ws,
            &args("request vm-01 --port 22 --duration 10m --justification f4 --wait --timeout 90s"),
        ),
        "request after the link flap",
    );
    assert!(
        wait_until(Duration::from_secs(10), ssh_ok),
        "ssh refused after a fresh grant"
    );
    let v = agent.ok(&["audit", "verify"]);
    assert!(v.contains("verifies"), "{v}");

    // Across the kill, the controller restart and the link flap, every record the agent wrote
    // reached the controller exactly once.
    let ids = |text: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["id"].as_str().map(str::to_string))
            .collect()
    };
    let mut at_agent = Vec::new();
    let mut at_controller = Vec::new();
    let converged = wait_until(Duration::from_secs(20), || {
        at_agent = ids(&agent.ok(&["audit", "--json"]));
        let v = ctl.jit_json(
            &fleet.ws,
            &args("audit --agent --vm vm-01 --limit 100000 --json"),
        );
        at_controller = v
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["record"]["id"].as_str().map(str::to_string))
            .collect();
        let mut a = at_agent.clone();
        let mut c = at_controller.clone();
        a.sort();
        c.sort();
        a == c
    });
    assert!(
        converged,
        "agent records {} vs at the controller {}",
        at_agent.len(),
        at_controller.len()
    );
    let mut distinct = at_controller.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), at_controller.len(), "a record stored twice");
    assert!(
        at_agent.len() > 10,
        "too few records to mean anything: {}",
        at_agent.len()
    );
}

/// Booked access end to end (docs/approvals.md "Windows"): booked through the real
/// controller with `jit request --start`, SSH is refused before the start, works after it
/// although the controller was killed before the start (the agent opens it by itself), and is
/// refused after the end; a booking revoked before its start never opens.
#[test]
fn booked_ssh_opens_at_its_start_without_the_controller() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let sshd = Sshd::start(&vm.ns).expect("sshd");
    let mut ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let token = ctl.add_vm("vm-01", vm.v4);
    ok(
        ctl.jit(
            &fleet.ws,
            &args(
                "policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 --max 3h",
            ),
        ),
        "policy",
    );
    let _agent = AgentProc::start_enrolled(
        &vm.ns,
        &args("--interface eth0 --protect 22/tcp"),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    let ssh_ok = || {
        sshd.ssh(&fleet.ws, vm.v4, "true", 2)
            .unwrap()
            .status
            .success()
    };
    // The agent must have said Hello (its level) before a booking is accepted.
    assert!(
        wait_until(Duration::from_secs(30), || {
            String::from_utf8_lossy(&ctl.jit(&fleet.ws, &args("agents --json")).stdout)
                .contains("online")
        }),
        "the agent never came online"
    );

    // A booking revoked before its start never opens.
    let cancelled = ctl.jit_json(
        &fleet.ws,
        &args("request vm-01 --port 22 --duration 1m --start +12s --justification b0 --json"),
    );
    assert_eq!(cancelled["status"], "Initiated", "{cancelled}");
    ok(
        ctl.jit(&fleet.ws, &["revoke", cancelled["id"].as_str().unwrap()]),
        "revoke the booking",
    );

    // Booked 15 s ahead for 20 s.
    let booked_at = Instant::now();
    let r = ctl.jit_json(
        &fleet.ws,
        &args("request vm-01 --port 22 --duration 20s --start +15s --justification b1 --json"),
    );
    assert_eq!(r["status"], "Initiated", "{r}");
    assert!(!ssh_ok(), "admitted before the booked start");
    // Give the booking time to reach the agent, then take the controller away.
    std::thread::sleep(Duration::from_secs(3));
    ctl.kill();
    assert!(
        !ssh_ok(),
        "admitted before the booked start (controller down)"
    );
    let start = booked_at + Duration::from_secs(15);
    while Instant::now() + Duration::from_millis(1500) < start {
        assert!(!ssh_ok(), "admitted before the booked start");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        wait_until(Duration::from_secs(10), ssh_ok),
        "not admitted after the booked start"
    );
    let end = booked_at + Duration::from_secs(35);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        wait_until(Duration::from_secs(5), || !ssh_ok()),
        "still admitted after the booked end"
    );
    // The revoked booking's start (12 s) has passed by now: it never opened (checked above:
    // SSH was refused until the second booking's start).
    ctl.spawn();
}
