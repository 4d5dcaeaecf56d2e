//! Drives the real `jit` binary against a real controller (HTTPS on 127.0.0.1, SQLite file).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Env;
use jitgate_api::Role;
use jitgate_controller::authz::Caller;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_request_history_revoke_and_exit_codes() {
    let e = Env::new().await;
    let admin = e.admin.clone();
    let alice = e.token("alice", Role::Requester, "rg:prod").await;
    let rita = e.token("rita", Role::Reader, "*").await;

    let o = e.jit(&admin, &["whoami"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("admin (admin on *)"), "{}", o.stdout);

    // The fleet: one enrolled agent, never connected.
    let (tok, _) = e
        .server
        .app
        .fleet
        .create_enroll_token(&Caller::local(), "web1")
        .await
        .expect("enrolment token");
    assert!(tok.starts_with("jitenroll_"));
    let o = e.jit(&rita, &["agents"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("VM "), "{}", o.stdout);
    let o = e.jit(&rita, &["agents", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.stdout.trim(), "[]", "{}", o.stdout);

    // policy set with flags, on the group; show it through the VM (effective)
    let o = e
        .jit(
            &admin,
            &[
                "policy",
                "set",
                "--resource-group",
                "prod",
                "--port",
                "22/tcp",
                "--port",
                "3389",
                "--source",
                "127.0.0.0/8",
                "--source",
                "2001:db8::/32",
                "--max",
                "3h",
                "--on-expiry",
                "cut",
                "--max-connections",
                "2",
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains("PT3H") && o.stdout.contains("2001:db8::/32"),
        "{}",
        o.stdout
    );
    let o = e.jit(&alice, &["policy", "show", "web1", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.json()["scope"], "resourceGroup");
    assert_eq!(o.json()["ports"][0]["onExpiry"], "cut");
    assert_eq!(o.json()["ports"][0]["maxConnections"], 2);
    // A limit that is not one is refused before anything is sent.
    let o = e
        .jit(
            &admin,
            &[
                "policy",
                "set",
                "--resource-group",
                "prod",
                "--port",
                "22",
                "--source",
                "127.0.0.0/8",
                "--max-connections",
                "0",
            ],
        )
        .await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("maxConnections"), "{}", o.stderr);
    let o = e.jit(&alice, &["policy", "show", "web1", "--json"]).await;
    assert_eq!(o.json()["ports"][0]["maxConnections"], 2);
    // Web1 has no agent that enforces a limit: a request that would carry one is refused.
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--duration",
                "1h",
                "-j",
                "x",
            ],
        )
        .await;
    assert_ne!(o.code, 0);
    assert!(o.stderr.contains("AgentTooOld"), "{}", o.stderr);
    // The rest of this test asks for unlimited access.
    let o = e
        .jit(
            &admin,
            &[
                "policy",
                "set",
                "--resource-group",
                "prod",
                "--port",
                "22/tcp",
                "--port",
                "3389",
                "--source",
                "127.0.0.0/8",
                "--source",
                "2001:db8::/32",
                "--max",
                "3h",
                "--on-expiry",
                "cut",
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    // policy set from a JSON file, on the VM
    let file = e._tmp.path().join("p.json");
    std::fs::write(
        &file,
        r#"{"ports":[{"number":22,"protocol":"TCP","allowedSourceAddressPrefix":"127.0.0.1","maxRequestAccessDuration":"PT1H"}]}"#,
    )
    .expect("write");
    let o = e
        .jit(
            &admin,
            &[
                "policy",
                "set",
                "web1",
                "--file",
                file.to_str().expect("path"),
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = e.jit(&alice, &["policy", "show", "web1", "--json"]).await;
    assert_eq!(o.json()["scope"], "virtualMachine");
    let o = e.jit(&admin, &["policy", "delete", "web1"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = e.jit(&admin, &["policy", "delete", "web1"]).await;
    assert_eq!(
        o.code, 6,
        "deleting a missing policy is not found: {}",
        o.stderr
    );

    // vms
    let o = e.jit(&alice, &["vms"]).await;
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.contains("web1") && o.stdout.contains("resourceGroup"),
        "{}",
        o.stdout
    );
    let o = e.jit(&alice, &["vms", "--json"]).await;
    assert_eq!(o.json()[0]["addresses"][1], "2001:db8::11");

    // request: approved (My IP = 127.0.0.1), then denied with reasons and exit 3
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--duration",
                "1h",
                "-j",
                "deploy fix",
                "--json",
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let r = o.json();
    assert_eq!(r["status"], "Initiated");
    assert_eq!(
        r["virtualMachines"][0]["ports"][0]["allowedSourceAddressPrefix"],
        "127.0.0.1/32"
    );
    let id = r["id"].as_str().expect("id").to_string();
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "web1",
                "--port",
                "22/udp",
                "--source",
                "10.0.0.0/8",
                "--duration",
                "5h",
                "-j",
                "too much",
            ],
        )
        .await;
    assert_eq!(o.code, 3, "{}", o.stderr);
    for reason in [
        "ProtocolNotAllowed",
        "SourceNotAllowed",
        "DurationExceedsMaximum",
    ] {
        assert!(o.stderr.contains(reason), "{reason}: {}", o.stderr);
    }
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--until",
                "2020-01-01T00:00:00Z",
                "-j",
                "late",
            ],
        )
        .await;
    assert_eq!(o.code, 3, "{}", o.stderr);
    assert!(o.stderr.contains("EndTimeInPast"));

    // history: table and JSON
    let o = e.jit(&rita, &["history", "web1"]).await;
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.contains("deploy fix") && o.stdout.contains("Denied"),
        "{}",
        o.stdout
    );
    let o = e.jit(&rita, &["history", "web1", "--json"]).await;
    assert_eq!(o.json().as_array().map(|a| a.len()), Some(3));

    // revoke: reader forbidden (5), alice ok, again conflict (7)
    let o = e.jit(&rita, &["revoke", &id]).await;
    assert_eq!(o.code, 5, "{}", o.stderr);
    let o = e.jit(&alice, &["revoke", &id, "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(
        o.json()["virtualMachines"][0]["ports"][0]["statusReason"],
        "UserRequested"
    );
    let o = e.jit(&alice, &["revoke", &id]).await;
    assert_eq!(o.code, 7, "{}", o.stderr);
    let o = e.jit(&alice, &["show", &id, "--json"]).await;
    assert_eq!(o.json()["status"], "Revoked");

    // other exit codes
    let o = e.jit(&format!("jit_{}", "1".repeat(64)), &["vms"]).await;
    assert_eq!(o.code, 4, "{}", o.stderr);
    let o = e
        .jit(
            &rita,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--duration",
                "1h",
                "-j",
                "x",
            ],
        )
        .await;
    assert_eq!(o.code, 5, "{}", o.stderr);
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "nope",
                "--port",
                "22",
                "--duration",
                "1h",
                "-j",
                "x",
            ],
        )
        .await;
    assert_eq!(o.code, 6, "{}", o.stderr);
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "web1",
                "--port",
                "0",
                "--duration",
                "1h",
                "-j",
                "x",
            ],
        )
        .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--source",
                "10.0.0.1/8",
                "--duration",
                "1h",
                "-j",
                "x",
            ],
        )
        .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    let o = e
        .jit(
            &alice,
            &[
                "request", "web1", "--port", "22", "--until", "soon", "-j", "x",
            ],
        )
        .await;
    assert_eq!(o.code, 2, "server-side 400: {}", o.stderr);
    assert!(o.stderr.contains("InvalidTime"), "{}", o.stderr);
    let o = e
        .jit(&alice, &["request", "web1", "--port", "22", "-j", "x"])
        .await;
    assert_eq!(o.code, 2, "missing --duration/--until is a usage error");
    let mut c = e.command(&alice, &["vms"]);
    c.env_remove("JIT_URL");
    let o = c.output().await.expect("run");
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("JIT_URL"));
}

/// Approvals from the command line: a two-stage rule set with flags, `request --wait`
/// waiting through PendingApproval (and saying who must approve), `approvals`, `approve`,
/// `deny` (exit 10 for the waiting requester), `cancel`, the report as CSV.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_from_the_command_line() {
    let e = Env::new().await;
    let admin = e.admin.clone();
    let alice = e.token("alice", Role::Requester, "rg:prod").await;
    let ann = e
        .token_in("ann", Role::Reader, "rg:prod", &["sec-leads"])
        .await;
    let mgr = e.token_in("mgr", Role::Reader, "*", &["ops"]).await;
    // Bad approver syntax: refused before anything is sent.
    let o = e
        .jit(
            &admin,
            &[
                "policy",
                "set",
                "--resource-group",
                "prod",
                "--port",
                "22",
                "--source",
                "127.0.0.0/8",
                "--approvers",
                "alice",
            ],
        )
        .await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("token:NAME"), "{}", o.stderr);
    let o = e
        .jit(
            &admin,
            &[
                "policy",
                "set",
                "--resource-group",
                "prod",
                "--port",
                "22",
                "--source",
                "127.0.0.0/8",
                "--stage",
                "group:sec-leads",
                "--stage",
                "group:ops=1",
                "--approval-timeout",
                "2h",
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .contains("1: 1 of group:sec-leads; 2: 1 of group:ops"),
        "{}",
        o.stdout
    );

    // A request that must wait: without --wait it is recorded and shown pending.
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--duration",
                "10m",
                "-j",
                "INC-5",
                "--json",
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.json()["status"], "PendingApproval");
    let first = o.json()["id"].as_str().expect("id").to_string();
    let o = e.jit(&ann, &["approvals"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains(&first) && o.stdout.contains("stage 1/2"),
        "{}",
        o.stdout
    );
    let o = e
        .jit(&ann, &["approve", &first, "--reason", "looks fine"])
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = e.jit(&ann, &["approve", &first]).await;
    assert_eq!(o.code, 7, "counted once: {}", o.stderr);
    let o = e.jit(&mgr, &["approve", &first, "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(o.json()["status"], "Initiated");

    // --wait through PendingApproval; an approver denies: exit 10 with the reason.
    let mut waiting = e.command(
        &alice,
        &[
            "request",
            "web1",
            "--port",
            "22",
            "--duration",
            "10m",
            "-j",
            "INC-6",
            "--wait",
            "--timeout",
            "2m",
        ],
    );
    let child = waiting.spawn().expect("spawn");
    let id = loop {
        let o = e.jit(&ann, &["approvals", "--json"]).await;
        if let Some(id) = o.json()[0]["id"].as_str() {
            break id.to_string();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let o = e.jit(&ann, &["deny", &id]).await;
    assert_eq!(o.code, 2, "a denial needs --reason: {}", o.stderr);
    let o = e.jit(&ann, &["deny", &id, "--reason", "freeze =cmd"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let out = child.wait_with_output().await.expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(10), "{stderr}");
    assert!(stderr.contains("waits for approval, stage 1/2"), "{stderr}");
    assert!(stderr.contains("Rejected: freeze =cmd"), "{stderr}");

    // Cancel by its requester; the report as formula-safe CSV.
    let o = e
        .jit(
            &alice,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--duration",
                "10m",
                "-j",
                "x",
                "--json",
            ],
        )
        .await;
    let id = o.json()["id"].as_str().expect("id").to_string();
    let o = e.jit(&ann, &["cancel", &id]).await;
    assert_eq!(o.code, 5, "only its requester: {}", o.stderr);
    let o = e.jit(&alice, &["cancel", &id]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let o = e.jit(&admin, &["approvals", "--history", "--csv"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout.contains(",'freeze =cmd") || o.stdout.contains("freeze =cmd"),
        "{}",
        o.stdout
    );
    assert_eq!(
        o.stdout.lines().count(),
        5,
        "header + 4 decisions: {}",
        o.stdout
    );
    let o = e.jit(&admin, &["show", &first]).await;
    assert!(
        o.stdout.contains("Approved (stage 2) by token:mgr"),
        "{}",
        o.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_connect_and_audit() {
    let e = Env::new().await;
    let admin = e.admin.clone();
    let o = e
        .jit(
            &admin,
            &[
                "policy",
                "set",
                "--resource-group",
                "prod",
                "--port",
                "22",
                "--port",
                "3389",
                "--source",
                "127.0.0.0/8",
                "--max",
                "2h",
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);

    // --wait times out (exit 8) when no agent applies the access; no timing race: nothing
    // ever applies it.
    let o = e
        .jit(
            &admin,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--duration",
                "1h",
                "-j",
                "x",
                "--wait",
                "--timeout",
                "1s",
                "--poll",
                "1s",
            ],
        )
        .await;
    assert_eq!(o.code, 8, "{}", o.stderr);
    assert!(o.stderr.contains("timed out"), "{}", o.stderr);

    // --wait returns once the agent channel acknowledges the grants (status Applied).
    let known = e.requests_in_outbox("web1").await;
    let child = e
        .command(
            &admin,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--duration",
                "1h",
                "-j",
                "wait ok",
                "--wait",
                "--timeout",
                "10m",
                "--json",
            ],
        )
        .spawn()
        .expect("spawn");
    let id = e.apply_next_request("web1", known).await;
    let o = child.wait_with_output().await.expect("wait");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["status"], "Applied");

    // connect ssh: asks for duration and justification (refused without a terminal) ...
    let o = e.jit(&admin, &["connect", "ssh", "web1"]).await;
    assert_eq!(o.code, 2, "{}", o.stderr);
    assert!(o.stderr.contains("duration"), "{}", o.stderr);
    // ... requests 22/tcp from My IP, waits until Applied, then runs ssh (dry run: prints it).
    let known = e.requests_in_outbox("web1").await;
    let child = e
        .command(
            &admin,
            &[
                "connect",
                "ssh",
                "web1",
                "--duration",
                "30m",
                "-j",
                "incident 7",
                "-l",
                "ops",
                "--dry-run",
                "--",
                "-o",
                "StrictHostKeyChecking=yes",
            ],
        )
        .spawn()
        .expect("spawn");
    let id = e.apply_next_request("web1", known).await;
    let o = child.wait_with_output().await.expect("wait");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let v: Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["requestId"], id.as_str());
    assert_eq!(
        v["command"],
        serde_json::json!([
            "ssh",
            "-l",
            "ops",
            "-o",
            "StrictHostKeyChecking=yes",
            "192.0.2.11"
        ])
    );
    let rec = e
        .server
        .app
        .lifecycle
        .get(&Caller::local(), &id)
        .await
        .expect("rec");
    assert_eq!(rec.justification, "incident 7");
    assert_eq!(rec.virtual_machines[0].ports[0].number, 22);
    assert_eq!(rec.virtual_machines[0].ports[0].protocol.as_str(), "TCP");
    assert_eq!(
        rec.virtual_machines[0].ports[0]
            .allowed_source_address_prefix
            .as_deref(),
        Some("127.0.0.1/32")
    );

    // connect rdp writes an .rdp file (IPv6 address with -6)
    let known = e.requests_in_outbox("web1").await;
    let rdp = e._tmp.path().join("web1.rdp");
    let child = e
        .command(
            &admin,
            &[
                "connect",
                "rdp",
                "web1",
                "-6",
                "--duration",
                "1h",
                "-j",
                "rdp",
                "-o",
                rdp.to_str().expect("path"),
            ],
        )
        .spawn()
        .expect("spawn");
    e.apply_next_request("web1", known).await;
    let o = child.wait_with_output().await.expect("wait");
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(&rdp).expect("rdp file");
    assert!(
        text.starts_with("full address:s:[2001:db8::11]:3389"),
        "{text}"
    );

    // audit: table, JSON, CSV, JSON lines, filters, verify
    let o = e.jit(&admin, &["audit", "--vm", "web1"]).await;
    assert_eq!(o.code, 0);
    assert!(
        o.stdout.contains("Initiate JIT Network Access"),
        "{}",
        o.stdout
    );
    let o = e
        .jit(&admin, &["audit", "--caller", "admin", "--json"])
        .await;
    let n = o.json().as_array().map(|a| a.len()).expect("list");
    assert!(n >= 5);
    let o = e
        .jit(&admin, &["audit", "--caller", "admin", "--csv"])
        .await;
    assert!(o.stdout.starts_with("seq,timeUtc,operation,"));
    assert_eq!(o.stdout.lines().count(), n + 1);
    let o = e
        .jit(&admin, &["audit", "--caller", "admin", "--jsonl"])
        .await;
    assert_eq!(o.stdout.lines().count(), n);
    let o = e
        .jit(
            &admin,
            &["audit", "--since", "2999-01-01T00:00:00Z", "--json"],
        )
        .await;
    assert_eq!(o.json().as_array().map(|a| a.len()), Some(0));
    let o = e.jit(&admin, &["audit", "verify"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.contains("activity log OK"));
    sqlx::query("UPDATE activity SET outcome = 'Denied' WHERE seq = 3")
        .execute(e.server.app.db.pool())
        .await
        .expect("tamper");
    let o = e.jit(&admin, &["audit", "verify"]).await;
    assert_eq!(o.code, 9, "{}", o.stdout);
    assert!(o.stdout.contains("entry 3"), "{}", o.stdout);
}

/// `jit keys`: admins on `*` see the keys and, during a rotation, the announced key with its
/// switch deadline; anyone else is refused (exit 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_for_admins_only() {
    use jitgate_controller::keys::files::KeyDir;
    use jitgate_controller::keys::rotation::Rotation;

    let e = Env::new().await;
    let admin = e.admin.clone();
    let rita = e.token("rita", Role::Reader, "*").await;
    let o = e.jit(&admin, &["keys"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(o.stdout.starts_with("KEY "), "{}", o.stdout);
    assert!(o.stdout.contains(" current "), "{}", o.stdout);
    assert!(o.stdout.contains("no rotation under way"), "{}", o.stdout);
    let o = e.jit(&rita, &["keys"]).await;
    assert_eq!(o.code, 5, "{}", o.stderr);

    let rotated = Rotation::new(e.server.app.db.clone(), KeyDir::new(e.dir.signing_key()))
        .rotate(&jitgate_controller::authz::Actor::local())
        .await
        .expect("rotate");
    let o = e.jit(&admin, &["keys", "--json"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let v: Value = serde_json::from_str(&o.stdout).expect("json");
    assert_eq!(v["rotatingTo"], rotated.key_id.as_str(), "{v}");
    assert_eq!(v["keys"][1]["state"], "next", "{v}");
    assert_eq!(v["keys"][1]["acknowledged"], 0, "{v}");
    assert_eq!(v["switchGraceSeconds"], 86400, "{v}");
    assert!(v["switchDueTimeUtc"].is_string(), "{v}");
    // Never a private half, nor where it is kept.
    assert!(
        !o.stdout.contains("PRIVATE") && !o.stdout.contains(".key"),
        "{}",
        o.stdout
    );
    let o = e.jit(&admin, &["keys"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .contains(&format!("rotating to {}", rotated.key_id)),
        "{}",
        o.stdout
    );
}

#[test]
fn every_help_explains() {
    for args in [
        vec!["--help"],
        vec!["request", "--help"],
        vec!["connect", "ssh", "--help"],
        vec!["connect", "rdp", "--help"],
        vec!["policy", "set", "--help"],
        vec!["audit", "--help"],
        vec!["history", "--help"],
        vec!["notify", "add", "--help"],
        vec!["notify", "secret", "set", "--help"],
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_jit"))
            .args(&args)
            .output()
            .expect("run");
        assert_eq!(o.status.code(), Some(0), "{args:?}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("Usage:"), "{args:?}: {text}");
    }
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_jit"))
        .arg("--help")
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&o.stdout).contains("EXIT CODES"));
}

/// Whether a terminal would act on any character of `s` other than the line breaks that
/// separate lines: a cursor movement, a colour, a title, a reordering (see cli/src/text.rs).
fn drives_a_terminal(s: &str) -> Option<char> {
    s.chars().find(|&c| {
        c != '\n'
            && (c.is_control()
                || matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}' | '\u{2028}' | '\u{2029}'))
    })
}

/// web1's own policy: SSH from 127.0.0.0/8 (`jit policy set`, which must succeed).
async fn ssh_from_loopback(e: &Env, admin: &str) {
    let o = e
        .jit(
            admin,
            &[
                "policy",
                "set",
                "web1",
                "--port",
                "22",
                "--source",
                "127.0.0.0/8",
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
}

/// A justification written to take over the terminal of whoever reads the history (clear
/// the screen, home the cursor, recolour, overwrite the line, reorder it) is shown as
/// visible escapes in every view, and kept exactly, as data, in the JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_cannot_drive_the_terminal() {
    let e = Env::new().await;
    let admin = e.admin.clone();
    ssh_from_loopback(&e, &admin).await;
    let hostile = "fix \x1b[2J\x1b[H\x1b[31mALL CLEAR\x1b[0m\x1b]0;owned\x07\r\x08\u{9b}7m\u{202e}exe.txt\u{2066}";
    let o = e
        .jit(
            &admin,
            &[
                "request",
                "web1",
                "--port",
                "22",
                "--duration",
                "1h",
                "-j",
                hostile,
            ],
        )
        .await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    let id = o
        .stdout
        .lines()
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .expect("request id")
        .to_string();
    let shown = "fix \\x1b[2J\\x1b[H\\x1b[31mALL CLEAR\\x1b[0m\\x1b]0;owned\\x07\\r\\x08\\x9b7m\\u{202e}exe.txt\\u{2066}";
    assert!(o.stdout.contains(shown), "{}", o.stdout);
    for args in [
        vec!["history", "web1"],
        vec!["show", id.as_str()],
        vec!["revoke", id.as_str()],
    ] {
        let o = e.jit(&admin, &args).await;
        assert_eq!(o.code, 0, "{args:?}: {}", o.stderr);
        assert_eq!(
            drives_a_terminal(&o.stdout),
            None,
            "{args:?}: {:?}",
            o.stdout
        );
        assert_eq!(
            drives_a_terminal(&o.stderr),
            None,
            "{args:?}: {:?}",
            o.stderr
        );
        assert!(o.stdout.contains(shown), "{args:?}: {}", o.stdout);
    }
    // --json passes the controller's JSON through: the same value, only escaped.
    let o = e.jit(&admin, &["history", "web1", "--json"]).await;
    assert_eq!(drives_a_terminal(&o.stdout), None, "{:?}", o.stdout);
    assert_eq!(o.json()[0]["justification"], hostile);
    // An error message that repeats what the caller sent is escaped too.
    let o = e.jit(&admin, &["revoke", "\x1b[31mnope"]).await;
    assert_eq!(o.code, 6, "{}", o.stderr);
    assert_eq!(drives_a_terminal(&o.stderr), None, "{:?}", o.stderr);
}

/// `jit vm show`: the VM, its policy, its agent (state, last heard, protocol level) and one
/// line per interface with jitgate's hook, position and the programs ahead; what the agent
/// wrote (its version, a program's name) made visible, never acted on; `--json` the API's
/// object, the same value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vm_show_gives_the_vm_its_agent_and_hooks() {
    let e = Env::new().await;
    let rita = e.token("rita", Role::Reader, "rg:prod").await;
    let o = e.jit(&rita, &["vm", "show", "web1"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert!(
        o.stdout
            .starts_with("VM web1 (resource group prod): 192.0.2.11, 2001:db8::11\n"),
        "{}",
        o.stdout
    );
    assert!(o.stdout.contains("no JIT policy"), "{}", o.stdout);
    assert!(
        o.stdout.contains("no agent was ever enrolled"),
        "{}",
        o.stdout
    );
    let o = e.jit(&rita, &["vm", "show", "web1", "--json"]).await;
    assert_eq!(o.json()["agent"], Value::Null, "{}", o.stdout);
    let o = e.jit(&rita, &["vm", "show", "nope"]).await;
    assert_eq!(o.code, 6, "{}", o.stderr);
    ssh_from_loopback(&e, &e.admin).await;

    // An agent at level 7, recorded as the agent channel records what it says: its Hello
    // and its hook report (another tool's program named to drive a terminal).
    let app = &e.server.app;
    let (token, _) = app
        .fleet
        .create_enroll_token(&Caller::local(), "web1")
        .await
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let csr_pem = rcgen::CertificateParams::new(Vec::<String>::new())
        .unwrap()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();
    let enrolled = app
        .fleet
        .enroll(
            "127.0.0.1",
            &jitgate_api::EnrollRequest {
                token,
                csr_pem,
                protocol: Some(jitgate_proto::PROTOCOL_LEVEL),
            },
        )
        .await
        .unwrap();
    let id = enrolled.agent_id;
    app.fleet
        .hello(&id, jitgate_proto::LEVEL_HOOK_REPORTS, "0.9.0\x1b[2J")
        .await
        .unwrap();
    let hostile = "xdp\x1b]0;owned\x07\u{202e}ssap";
    let mut reported = jitgate_proto::testing::example_hooks();
    reported[0].ahead[0].name = hostile.into();
    app.fleet
        .hooks(&id, &jitgate_controller::fleet::hooks_from_agent(reported))
        .unwrap();
    // Written within a second (with the agents' batched reports).
    let mut shown = Value::Null;
    for _ in 0..100 {
        let o = e.jit(&rita, &["vm", "show", "web1", "--json"]).await;
        assert_eq!(o.code, 0, "{}", o.stderr);
        assert_eq!(drives_a_terminal(&o.stdout), None, "{:?}", o.stdout);
        shown = o.json();
        if shown["agent"]["hooks"]
            .as_array()
            .is_some_and(|h| h.len() == 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let agent = &shown["agent"];
    assert_eq!(agent["agentId"], id.as_str(), "{shown:#}");
    assert_eq!(
        agent["protocol"],
        jitgate_proto::LEVEL_HOOK_REPORTS,
        "{shown:#}"
    );
    assert_eq!(agent["hooks"][0]["ahead"][0]["name"], hostile, "{shown:#}");
    assert_eq!(
        shown["effectivePolicy"]["ports"][0]["number"], 22,
        "{shown:#}"
    );

    let o = e.jit(&rita, &["vm", "show", "web1"]).await;
    assert_eq!(o.code, 0, "{}", o.stderr);
    assert_eq!(drives_a_terminal(&o.stdout), None, "{:?}", o.stdout);
    let text = &o.stdout;
    assert!(text.contains("virtualMachine policy of web1"), "{text}");
    // Enrolled, said Hello, no connection now: offline, last heard at its Hello.
    assert!(
        text.contains(&format!("agent {id}: offline, last heard 20")),
        "{text}"
    );
    assert!(
        text.contains("protocol level 7, version 0.9.0\\x1b[2J\n"),
        "{text}"
    );
    let line = |iface: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(iface))
            .unwrap_or_else(|| panic!("no line for {iface}: {text}"))
            .to_string()
    };
    let eth0 = line("eth0");
    for part in [
        "tcx-ingress (tcx)",
        "1 of 2",
        "xdp\\x1b]0;owned\\x07\\u{202e}ssap (id 40, xdp), tc_count (id 41, tcx-ingress)",
        "NotFirst",
    ] {
        assert!(eth0.contains(part), "{part}: {eth0}");
    }
    let eth1 = line("eth1");
    for part in [
        "xdp-dispatcher (driver)",
        "0 of 1",
        "Missing: jitgate's slot was removed from the XDP dispatcher",
    ] {
        assert!(eth1.contains(part), "{part}: {eth1}");
    }
}

/// `jit-gen DIR` writes a man page per command and the shell completions, from the same
/// clap definition `jit` runs.
#[test]
fn man_pages_and_completions_are_generated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_jit-gen"))
        .arg(dir.path())
        .output()
        .expect("run jit-gen");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let read = |p: &str| {
        std::fs::read_to_string(dir.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"))
    };
    let top = read("man/jit.1");
    assert!(top.starts_with(".ie") || top.contains(".TH jit 1"), "{top}");
    assert!(
        top.contains("EXIT CODES") && top.contains("compliance"),
        "{top}"
    );
    for page in [
        "jit-request.1",
        "jit-connect-ssh.1",
        "jit-policy-set.1",
        "jit-audit-verify.1",
    ] {
        assert!(read(&format!("man/{page}")).contains("\\-\\-"), "{page}");
    }
    // No pages for clap's built-in `help` subcommands.
    let helps: Vec<String> = std::fs::read_dir(dir.path().join("man"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("-help"))
        .collect();
    assert!(helps.is_empty(), "{helps:?}");
    let bash = read("completions/jit.bash");
    assert!(
        bash.contains("connections") && bash.contains("--on-expiry"),
        "{bash}"
    );
    assert!(
        bash.contains("keep") && bash.contains("cut"),
        "possible values: {bash}"
    );
    // The bash script parses.
    let o = std::process::Command::new("bash")
        .arg("-n")
        .arg(dir.path().join("completions/jit.bash"))
        .output()
        .expect("bash -n");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for f in ["_jit", "jit.fish", "_jit.ps1", "jit.elv"] {
        assert!(read(&format!("completions/{f}")).contains("request"), "{f}");
    }
}
