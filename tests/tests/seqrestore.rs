//! A controller restored from an older backup, with the real `jit-agent` and
//! `jit-controller` (docs/ha.md, "Sequence numbers after a restore or promotion"): the agent
//! took grants, a policy change and wrote audit records after the backup; after the restore
//! it still applies new grants and policy changes (its marks moved the controller's
//! sequences past them, with one activity entry), the records the backup lacked are sent
//! again, and the activity log verifies.

use std::time::Duration;

use jitgate_tests::agent::{AgentProc, args};
use jitgate_tests::controller::ControllerProc;
use jitgate_tests::fleet::{Fleet, WS_V4};
use jitgate_tests::{ok, require_root, wait_until};

const AGENT_ARGS: &str = "--interface eth0 --protect 22/tcp";

fn policy(ctl: &ControllerProc, ns: &str, ports: &str) {
    ok(
        ctl.jit(
            ns,
            &args(&format!(
                "policy set --resource-group prod {ports} --source 198.51.100.0/24 --max 3h"
            )),
        ),
        "policy set",
    );
}

/// A request for SSH on vm-01 from the caller's address, waited for until `Applied` (the
/// logs of both sides when it is not).
fn request(ctl: &ControllerProc, agent: &AgentProc, ns: &str, why: &str) -> serde_json::Value {
    let out = ctl.jit(
        ns,
        &args(&format!(
            "request vm-01 --port 22 --duration 10m --justification {why} --wait --timeout 30s --json"
        )),
    );
    assert!(
        out.status.success(),
        "request {why}: {}\n--- controller ---\n{}\n--- agent ---\n{}",
        String::from_utf8_lossy(&out.stderr),
        ctl.log_text(),
        agent.log_text()
    );
    serde_json::from_slice(&out.stdout).expect("request json")
}

/// The agent protects `port` (its policy arrived) within 10 s.
fn protects(agent: &AgentProc, port: &str) -> bool {
    wait_until(Duration::from_secs(10), || {
        agent.ok(&["status"]).contains(port)
    })
}

/// The agent's persisted marks (`channel.json`).
fn marks(a: &AgentProc) -> serde_json::Value {
    let text = std::fs::read_to_string(a.state_dir.join("channel.json")).expect("channel.json");
    serde_json::from_str(&text).expect("channel.json parses")
}

/// The audit records the controller stored from the (only) agent.
fn stored_records(ctl: &ControllerProc, ns: &str) -> i64 {
    let v = ctl.jit_json(ns, &["agents", "--json"]);
    v[0]["auditRecords"].as_i64().unwrap_or(-1)
}

#[test]
fn an_agent_follows_its_controller_restored_from_an_older_backup() {
    if !require_root() {
        return;
    }
    let fleet = Fleet::new(1).expect("fleet");
    let ws = fleet.ws.clone();
    let mut ctl = ControllerProc::start(&ws, WS_V4);
    let token = ctl.add_vm("vm-01", fleet.vms[0].v4);
    policy(&ctl, &ws, "--port 22/tcp");
    let agent = AgentProc::start_enrolled(
        &fleet.vms[0].ns,
        &args(AGENT_ARGS),
        &ctl.api,
        &ctl.ca,
        &token,
    );
    assert!(
        protects(&agent, "22/tcp"),
        "the policy did not arrive: {}",
        agent.log_text()
    );
    let first = request(&ctl, &agent, &ws, "before-the-backup");
    assert_eq!(first["status"], "Applied", "{first}");

    let work = tempfile::tempdir().expect("tempdir");
    let file = work.path().join("backup.jsonl");
    let file_s = file.to_str().expect("utf-8 path");
    ctl.admin(&["backup", file_s]);

    // After the backup: a request (it supersedes the first), a policy change, and the audit
    // records they make on the agent.
    let second = request(&ctl, &agent, &ws, "after-the-backup");
    assert_eq!(second["status"], "Applied", "{second}");
    policy(&ctl, &ws, "--port 22/tcp --port 2222/tcp");
    assert!(
        protects(&agent, "2222/tcp"),
        "the policy change did not arrive"
    );
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = marks(&agent);
            m["audit_acked"].as_i64() == Some(stored_records(&ctl, &ws))
        }),
        "the audit records were not all delivered"
    );
    let before = marks(&agent);

    // The controller is restored from the backup into an empty database.
    ctl.kill();
    for e in std::fs::read_dir(&ctl.state).expect("state dir") {
        let p = e.expect("entry").path();
        if p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("jit.db"))
        {
            std::fs::remove_file(&p).expect("remove the database");
        }
    }
    let restored = ctl.admin(&["restore", file_s]);
    assert_eq!(restored["verify"]["ok"], true, "{restored}");
    ctl.spawn();
    // The agent is back (its marks move the restored controller's sequences) before the
    // restored controller numbers anything for it (docs/ha.md, "Not done yet").
    assert!(
        wait_until(Duration::from_secs(20), || ctl
            .log_text()
            .contains("sequences moved past them")),
        "the agent did not come back: {}",
        agent.log_text()
    );

    // New requests and policy changes reach the agent and are applied.
    let third = request(&ctl, &agent, &ws, "after-the-restore");
    assert_eq!(third["status"], "Applied", "{third}");
    policy(&ctl, &ws, "--port 22/tcp --port 2223/tcp");
    assert!(
        protects(&agent, "2223/tcp"),
        "the policy change after the restore did not arrive: {}",
        agent.log_text()
    );
    let after = marks(&agent);
    assert!(
        after["seq_high_water"].as_u64() > before["seq_high_water"].as_u64()
            && after["policy_seq"].as_u64() > before["policy_seq"].as_u64(),
        "{before} -> {after}"
    );
    let audit = agent.ok(&["audit", "--json"]);
    assert!(
        !audit.contains("replay"),
        "the agent refused something as a replay: {audit}"
    );

    // One activity entry says what moved; the audit records the backup lacked are back.
    let out = ctl.jit(
        &ws,
        &[
            "audit",
            "--operation",
            "Recover Sequence Numbers",
            "--jsonl",
        ],
    );
    let activity = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(activity.lines().count(), 1, "{activity}");
    assert!(
        activity.contains("outbox") && activity.contains("policy_base"),
        "{activity}"
    );
    let acked = before["audit_acked"].as_i64().expect("audit mark");
    assert!(
        wait_until(Duration::from_secs(10), || stored_records(&ctl, &ws)
            >= acked),
        "the controller has {} of the agent's {acked} records",
        stored_records(&ctl, &ws)
    );
    let verify = ctl.jit_json(&ws, &args("audit verify --json"));
    assert_eq!(verify["ok"], true, "{verify}");
}
