//! Agent certificates renewed over the channel with the real `jit-agent` and
//! `jit-controller` (docs/operations.md, "Rotation"): a 30-second certificate renewed before
//! it expires, the agent still working (a grant applied) after the original would have
//! expired; an agent stopped past its certificate's expiry renews when it returns within the
//! grace; one that returns after the grace is refused, with the reason in its status and in
//! the controller's log and activity log. The server certificate renewed from the CA
//! (`jit-controller certs renew-server`) and reloaded on SIGHUP without a restart.

use std::time::{Duration, Instant};

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::{require_root, wait_until};

const AGENT_ARGS: &str = "--interface eth0 --protect 22/tcp";
const LIFETIME: u64 = 30;
const GRACE: u64 = 20;

fn cert(a: &AgentProc) -> String {
    std::fs::read_to_string(a.state_dir.join("enrollment/agent.crt")).expect("agent.crt")
}

fn connected(a: &AgentProc) -> bool {
    a.cli(&["status"]).status.success() && {
        let s = a.ok(&["status"]);
        s.lines()
            .any(|l| l.starts_with("controller") && !l.contains("not connected"))
    }
}

#[test]
fn agent_certificates_renew_over_the_channel_within_the_grace_and_not_after_it() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(3).expect("fleet");
    let ctl = ControllerProc::start_with(
        &fleet.ws,
        WS_V4,
        &format!(
            "[certificates]\nagent_lifetime_seconds = {LIFETIME}\nagent_grace_seconds = {GRACE}\n"
        ),
    );
    let tokens: Vec<String> = (0..3)
        .map(|i| ctl.add_vm(&format!("vm-0{}", i + 1), fleet.vms[i].v4))
        .collect();
    let set = ctl.jit(
        &fleet.ws,
        &args("policy set --resource-group prod --port 22/tcp --source 198.51.100.0/24 --max 3h"),
    );
    assert!(
        set.status.success(),
        "policy set: {}",
        String::from_utf8_lossy(&set.stderr)
    );
    let t0 = Instant::now();
    let mut agents: Vec<AgentProc> = (0..3)
        .map(|i| {
            AgentProc::start_enrolled(
                &fleet.vms[i].ns,
                &args(AGENT_ARGS),
                &ctl.api,
                &ctl.ca,
                &tokens[i],
            )
        })
        .collect();
    for a in &agents {
        assert!(
            wait_until(Duration::from_secs(10), || connected(a)),
            "not connected: {}",
            a.log_text()
        );
        assert!(a.ok(&["status"]).contains("certificate    expires"));
    }
    let originals: Vec<String> = agents.iter().map(cert).collect();
    // vm-02 and vm-03 go away (their certificates expire while they are off).
    agents[1].stop();
    agents[2].stop();

    // vm-01 renews before its certificate expires (at 2/3 of its life), with the same key.
    let key_before =
        std::fs::read_to_string(agents[0].state_dir.join("enrollment/agent.key")).expect("key");
    assert!(
        wait_until(Duration::from_secs(LIFETIME), || cert(&agents[0])
            != originals[0]),
        "vm-01 did not renew: {}",
        agents[0].log_text()
    );
    assert!(
        t0.elapsed() < Duration::from_secs(LIFETIME),
        "renewed only after expiry"
    );
    let key_after =
        std::fs::read_to_string(agents[0].state_dir.join("enrollment/agent.key")).expect("key");
    assert_eq!(key_before, key_after, "the same key");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(agents[0].state_dir.join("enrollment/agent.crt"))
        .expect("agent.crt")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Past the original expiry (and past the first renewal's 2/3: renewed again), vm-01
    // still works: connected, and a grant reaches it.
    std::thread::sleep(Duration::from_secs(LIFETIME + 3).saturating_sub(t0.elapsed()));
    // vm-02 returns, its certificate expired but within the grace: it renews and connects.
    agents[1].spawn();
    assert!(
        wait_until(Duration::from_secs(15), || cert(&agents[1]) != originals[1]
            && connected(&agents[1])),
        "vm-02 did not renew within the grace: {}",
        agents[1].log_text()
    );
    assert!(
        wait_until(Duration::from_secs(10), || connected(&agents[0])),
        "vm-01 is not connected after its first certificate expired: {}",
        agents[0].log_text()
    );
    let req = ctl.jit_json(
        &fleet.ws,
        &args("request vm-01 --port 22 --duration 10m --justification renewed --wait --json"),
    );
    assert!(
        req.to_string().contains("Applied"),
        "the grant was not applied on vm-01: {req}"
    );
    assert!(
        ctl.log_text().contains("agent certificate renewed"),
        "{}",
        ctl.log_text()
    );

    // The server certificate renewed from the CA and reloaded on SIGHUP, without a restart:
    // the established channels go on (a grant reaches vm-02), a new connection (vm-01
    // restarted) verifies the new certificate against its CA bundle.
    let renewed = ctl.admin(&["certs", "renew-server", "--days", "30"]);
    assert!(renewed["notAfterUnix"].as_i64().is_some(), "{renewed}");
    assert!(ctl.signal("HUP"));
    assert!(
        wait_until(Duration::from_secs(5), || ctl
            .log_text()
            .contains("server certificate reloaded")),
        "{}",
        ctl.log_text()
    );
    let req = ctl.jit_json(
        &fleet.ws,
        &args("request vm-02 --port 22 --duration 10m --justification reloaded --wait --json"),
    );
    assert!(req.to_string().contains("Applied"), "vm-02: {req}");
    agents[0].restart();
    assert!(
        wait_until(Duration::from_secs(10), || connected(&agents[0])),
        "vm-01 did not connect to the reloaded certificate: {}",
        agents[0].log_text()
    );

    // vm-03 returns after the grace: refused, with a clear reason on both sides.
    std::thread::sleep(Duration::from_secs(LIFETIME + GRACE + 6).saturating_sub(t0.elapsed()));
    agents[2].spawn();
    assert!(
        wait_until(Duration::from_secs(15), || agents[2]
            .ok(&["status"])
            .contains("re-enrol")),
        "vm-03's status does not say to re-enrol: {}\n{}",
        agents[2].ok(&["status"]),
        agents[2].log_text()
    );
    assert!(!connected(&agents[2]));
    assert_eq!(cert(&agents[2]), originals[2], "no renewal past the grace");
    assert!(
        wait_until(Duration::from_secs(5), || ctl
            .log_text()
            .contains("past the renewal grace")),
        "{}",
        ctl.log_text()
    );
    let out = ctl.jit(
        &fleet.ws,
        &["audit", "--operation", "Renew Agent Certificate", "--jsonl"],
    );
    let activity = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        activity.contains("Succeeded") && activity.contains("renewal grace"),
        "{activity}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
