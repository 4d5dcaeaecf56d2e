//! The whole system in namespaces: the real controller, an enrolled agent on a VM running a
//! real sshd, and an operator using the `jit` CLI from a workstation.

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
    let fleet = Fleet::new(1).expect("fleet");
    let vm = &fleet.vms[0];
    let sshd = Sshd::start(&vm.ns).expect("sshd");
    let ctl = ControllerProc::start(&fleet.ws, WS_V4);
    let token = ctl.add_vm("vm-01", vm.v4);

    // Policy from the controller: 22/tcp from the workstation's network, cut at expiry.
    ok(
        ctl.jit(&fleet.ws, &args("policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 --max 3h --on-expiry cut")),
        "policy set",
    );
    let agent = AgentProc::start_enrolled(
        &vm.ns,
        &args("--interface eth0 --protect 22/tcp:keep"),
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
    let out = ok(
        ctl.jit(
            &fleet.ws,
            &args("request vm-01 --port 22 --duration 10m --justification e2e-test --wait --json"),
        ),
        "request --wait",
    );
    let applied_in = t0.elapsed();
    let req: serde_json::Value = serde_json::from_str(&out).expect("request json");
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

    // The grant on the agent came from the controller, with the operator as requester.
    let grants = agent.grants_json();
    let g = &grants["grants"]["grants"][0];
    assert_eq!(g["origin"], "controller", "{grants}");
    assert_eq!(g["source"], format!("{WS_V4}/32"), "{grants}");

    // A live session, then a longer request for the same source (an extension): the new
    // grant supersedes the old one and the session survives the hand-over.
    let mut session = sshd.session(&fleet.ws, vm.v4, "sleep 60").unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let ext = ok(
        ctl.jit(
            &fleet.ws,
            &args("request vm-01 --port 22 --duration 20m --justification extend --wait --json"),
        ),
        "extension",
    );
    let ext: serde_json::Value = serde_json::from_str(&ext).expect("request json");
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

    // The agent's audit records reached the controller; the fleet view shows it online.
    let agents = ok(ctl.jit(&fleet.ws, &args("agents --json")), "agents");
    assert!(agents.contains("vm-01"), "{agents}");
    let audit = agent.ok(&["audit", "--json"]);
    assert!(
        audit.contains("grant.applied") && audit.contains("grant.revoked"),
        "{audit}"
    );
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
    let r: serde_json::Value = serde_json::from_str(&ok(
        ctl.jit(
            &fleet.ws,
            &args("request vm-01 --port 22 --duration 30m --justification f1 --wait --json"),
        ),
        "request",
    ))
    .unwrap();
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
    let r: serde_json::Value = serde_json::from_str(&ok(
        ctl.jit(&fleet.ws, &args("request vm-01 --port 22 --duration 3s --justification f3 --wait --timeout 60s --json")),
        "request after the controller restart",
    ))
    .unwrap();
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
}
