//! Hook reports over the real agent channel (SQLite, or PostgreSQL with
//! `JIT_TEST_BACKEND=postgres`): a level-7 agent is told the controller's level and reports
//! where its program runs per interface; the fleet API, the portal's VM and agent pages and
//! compliance show it (a program ahead of jitgate, its program missing), each fact once. A
//! level-6 agent is never sent the level, its problems in words still count, and a hook
//! report from it is a protocol error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "common/portal_client.rs"]
mod portal_client;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use std::time::Duration;

use common::Harness;
use common::agent::{Agent, enroll};
use jitgate_api::Role;
use jitgate_proto::message::{Heartbeat, StatusReport};
use jitgate_proto::{
    AgentMsg, ControllerMsg, HookKind, HookMode, InterfaceHook, LEVEL_HOOK_REPORTS,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn status(problems: Vec<String>) -> AgentMsg {
    status_at(problems, 3)
}

/// A status report whose audit head is at `audit_seq` (a change the controller writes at once).
fn status_at(problems: Vec<String>, audit_seq: u64) -> AgentMsg {
    AgentMsg::Status(Box::new(StatusReport {
        heartbeat: Heartbeat {
            interfaces: vec![
                ("eth0".into(), "tcx".into()),
                ("eth1".into(), "driver".into()),
            ],
            protected: vec!["22/tcp:keep".parse().unwrap()],
            listening: vec![(jitgate_common::Protocol::Tcp, "0.0.0.0:22".into())],
            active_grants: 0,
            audit_head: "ab".repeat(32),
            audit_seq,
        },
        addresses: vec![
            ("eth0".into(), "192.0.2.11".into()),
            ("eth1".into(), "198.51.100.11".into()),
        ],
        problems,
        agent_unix_ms: jitgate_api::time::now_ms(),
    }))
}

/// The shared example report (`jitgate_proto::testing::example_hooks`): eth0 at tcx ingress
/// behind another tool's `xdp_pass` (`<b>` added to its name to show it is escaped) and a
/// tcx program; eth1's dispatcher slot unloaded.
fn hooks() -> AgentMsg {
    let mut interfaces = jitgate_proto::testing::example_hooks();
    interfaces[0].ahead[0].name.push_str("<b>");
    AgentMsg::Hooks { interfaces }
}

/// The only agent of the fleet view, once `done` holds for it (polled for 10 s).
async fn agent_view(h: &Harness, token: &str, done: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..200 {
        let (st, v) = h.get("/api/v1/agents", token).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        last = v["value"][0].clone();
        if done(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the agent never showed it: {last:#}");
}

/// A fresh evaluation's findings for web1 as (code, interface).
async fn findings(h: &Harness) -> (Vec<(String, String)>, Value) {
    let (st, v) = h
        .call(
            Method::POST,
            "/api/v1/compliance/scans",
            Some(&h.admin),
            Some(json!({})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, r) = h.get("/api/v1/compliance?scope=vm:web1", &h.admin).await;
    let f = r["results"][0]["findings"].clone();
    let codes = f
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["code"].as_str().unwrap().to_string(),
                x["interface"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    (codes, f)
}

async fn setup(h: &Harness) -> String {
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let (st, v) = h
        .call(
            Method::POST,
            "/api/v1/compliance/assignments",
            Some(&h.admin),
            Some(json!({"scope": "rg:prod"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    h.token("rita", Role::Reader, "rg:prod").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_7_agent_reports_its_hooks_and_they_are_shown_and_judged() {
    let p = portal_client::Portal::start().await;
    let h = &p.h;
    let reader = setup(h).await;
    let c = enroll(h, "web1").await;
    let mut a = Agent::connect(&c).await;
    // The handshake checks that the controller's Level comes right after Settings.
    a.handshake_at(&c, 0, LEVEL_HOOK_REPORTS).await;

    // First healthy: jitgate first on both interfaces.
    let healthy = AgentMsg::Hooks {
        interfaces: vec![InterfaceHook {
            interface: "eth0".into(),
            hook: HookKind::XdpDispatcher,
            mode: HookMode::Driver,
            position: 0,
            programs: 2,
            ahead: vec![],
            problem: None,
        }],
    };
    a.send(&healthy).await;
    a.send(&status(vec![])).await;
    let v = agent_view(h, &reader, |v| {
        v["hooks"].as_array().is_some_and(|x| !x.is_empty()) && v["auditHead"].is_string()
    })
    .await;
    assert_eq!(v["connection"], "online", "{v:#}");
    assert_eq!(
        v["hooks"],
        json!([{"interface": "eth0", "hook": "xdp-dispatcher", "mode": "driver",
                "position": 0, "programs": 2, "ahead": []}]),
        "{v:#}"
    );
    let (codes, _) = findings(h).await;
    assert_eq!(codes, Vec::<(String, String)>::new(), "compliant");

    // Then another program ahead on eth0 and the slot gone on eth1.
    a.send(&hooks()).await;
    a.send(&status(vec![])).await;
    let v = agent_view(h, &reader, |v| {
        v["hooks"].as_array().is_some_and(|x| x.len() == 2)
    })
    .await;
    assert_eq!(v["hooks"][0]["hook"], "tcx-ingress", "{v:#}");
    assert_eq!(v["hooks"][0]["problem"], "NotFirst", "{v:#}");
    assert_eq!(
        v["hooks"][0]["ahead"],
        json!([{"id": 40, "name": "xdp_pass<b>", "hook": "xdp"},
               {"id": 41, "name": "tc_count", "hook": "tcx-ingress"}])
    );
    assert_eq!(v["hooks"][1]["problem"], "Missing", "{v:#}");
    assert_eq!(
        v["hooks"][1]["problemReason"],
        "jitgate's slot was removed from the XDP dispatcher"
    );
    // Degraded, with the hooks' problems in words.
    let v = agent_view(h, &reader, |v| v["connection"] == "degraded").await;
    let problems = v["problems"].to_string();
    assert!(
        problems.contains("another program runs ahead of jitgate on eth0"),
        "{problems}"
    );
    assert!(
        problems.contains("jitgate's program is missing from eth1"),
        "{problems}"
    );
    // Compliance: one finding per fact, none of them twice.
    let (codes, f) = findings(h).await;
    assert_eq!(
        codes,
        [
            ("ProgramNotFirst".to_string(), "eth0".to_string()),
            ("ProgramMissing".to_string(), "eth1".to_string())
        ],
        "{f:#}"
    );
    let reason = f[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("xdp_pass<b> (id 40, xdp), tc_count (id 41, tcx-ingress)"),
        "{reason}"
    );

    // The VM's API object carries its agent with the same hooks.
    let (st, vm) = h.get("/api/v1/virtualMachines/web1", &reader).await;
    assert_eq!(st, StatusCode::OK, "{vm}");
    let agent = &vm["agent"];
    assert_eq!(agent["agentId"], c.id.to_string(), "{vm:#}");
    assert_eq!(agent["status"], "active", "{vm:#}");
    assert_eq!(agent["connection"], "degraded", "{vm:#}");
    assert_eq!(agent["protocol"], LEVEL_HOOK_REPORTS, "{vm:#}");
    assert!(agent["lastSeenTimeUtc"].is_string(), "{vm:#}");
    assert!(agent["lastReportTimeUtc"].is_string(), "{vm:#}");
    assert_eq!(agent["hooks"], v["hooks"], "{vm:#}");
    // A VM that never had an agent: null.
    let (_, web2) = h.get("/api/v1/virtualMachines/web2", &reader).await;
    assert_eq!(web2["agent"], Value::Null, "{web2:#}");

    // The portal's VM page and its agent's page show them, escaped.
    let alice = p.sign_in("alice").await; // admin on *
    for path in ["/vms/web1".to_string(), format!("/fleet/{}", c.id)] {
        let page = p.get(&alice, &path).await;
        assert_eq!(page.status, StatusCode::OK, "{path}");
        let body = &page.body;
        assert!(body.contains("id=\"hooks\""), "{path}: {body}");
        assert!(
            body.contains("xdp_pass&#60;b&#62; (id 40, xdp)"),
            "{path}: {body}"
        );
        assert!(!body.contains("xdp_pass<b>"), "{path}: not escaped: {body}");
        assert!(body.contains("tcx-ingress (tcx)"), "{path}: {body}");
        assert!(body.contains("1 of 2"), "{path}: {body}");
    }

    // The same report again is accepted (and not written again).
    a.send(&hooks()).await;
    a.send(&AgentMsg::Pong { nonce: 1 }).await;
    assert!(!a.closed_within(Duration::from_millis(300)).await);

    // The host goes back to an agent at level 6: its hook report is forgotten (it will not
    // renew it), and its words count again.
    drop(a);
    let mut old = Agent::connect(&c).await;
    old.handshake_at(&c, 0, LEVEL_HOOK_REPORTS - 1).await;
    old.send(&status(vec![])).await;
    let v = agent_view(h, &reader, |v| {
        v["hooks"] == json!([]) && v["connection"] == "online"
    })
    .await;
    assert_eq!(v["problems"], json!([]), "{v:#}");
    let (codes, f) = findings(h).await;
    assert_eq!(codes, Vec::<(String, String)>::new(), "{f:#}");
}

/// [`setup`], then web1's agent enrolled and connected at protocol `level` (its handshake
/// checked): the reader's token and the agent.
async fn connected_at(h: &Harness, level: u32) -> (String, Agent) {
    let reader = setup(h).await;
    let c = enroll(h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, level).await;
    (reader, a)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_6_agent_is_not_told_the_level_and_its_words_still_count() {
    let h = &Harness::new().await;
    // Level 6: Welcome, Settings, then the policy (a Level in between fails the handshake).
    let (reader, mut a) = connected_at(h, LEVEL_HOOK_REPORTS - 1).await;
    let words = "eth0: 1 ahead of jitgate at tcx-ingress: xdp_pass (id 41, xdp)".to_string();
    a.send(&status(vec![words.clone()])).await;
    let v = agent_view(h, &reader, |v| v["connection"] == "degraded").await;
    assert_eq!(v["hooks"], json!([]), "{v:#}");
    assert_eq!(v["problems"], json!([words]), "{v:#}");
    let (codes, f) = findings(h).await;
    assert_eq!(
        codes,
        [("ProgramUnhealthy".to_string(), String::new())],
        "{f:#}"
    );
    assert_eq!(f[0]["reason"], words.as_str());
    // Nothing more came: no Level, ever.
    while let Some(m) = a.recv_within(Duration::from_millis(300)).await {
        assert!(!matches!(m, ControllerMsg::Level { .. }), "{m:?}");
    }
    // A hook report from an agent that announced level 6 ends the connection.
    a.send(&hooks()).await;
    assert!(a.closed_within(Duration::from_secs(5)).await);
}

/// A hook report is as old as the status report it came with: once that is stale, the
/// evaluation says so (StaleStatusReport) and no longer judges where the program ran then;
/// when the agent reports again, the hook findings come back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_hook_report_is_not_judged() {
    let h = &Harness::new().await;
    let (reader, mut a) = connected_at(h, LEVEL_HOOK_REPORTS).await;
    a.send(&hooks()).await;
    a.send(&status(vec![])).await;
    agent_view(h, &reader, |v| {
        v["hooks"].as_array().is_some_and(|x| x.len() == 2) && v["auditSeq"] == 3
    })
    .await;
    let judged = vec![
        ("ProgramNotFirst".to_string(), "eth0".to_string()),
        ("ProgramMissing".to_string(), "eth1".to_string()),
    ];
    let (codes, f) = findings(h).await;
    assert_eq!(codes, judged, "{f:#}");

    // The status report goes stale: received two minutes ago (the agent stays connected).
    let pool = h.app().db.pool();
    let id: String = sqlx::query_scalar("SELECT id FROM agents WHERE vm = 'web1'")
        .fetch_one(pool)
        .await
        .unwrap();
    let stored: String = sqlx::query_scalar("SELECT heartbeat FROM agents WHERE id = $1")
        .bind(id.as_str())
        .fetch_one(pool)
        .await
        .unwrap();
    let mut report: Value = serde_json::from_str(&stored).unwrap();
    let old = jitgate_api::time::now_ms() - 120_000;
    report["receivedMs"] = json!(old);
    sqlx::query("UPDATE agents SET heartbeat = $1 WHERE id = $2")
        .bind(report.to_string())
        .bind(id.as_str())
        .execute(pool)
        .await
        .unwrap();
    // (Heard from, so that the connection is not closed as silent meanwhile.)
    a.send(&AgentMsg::Pong { nonce: 0 }).await;
    let (codes, f) = findings(h).await;
    assert_eq!(
        codes,
        [("StaleStatusReport".to_string(), String::new())],
        "{f:#}"
    );
    // The API still shows the last report, and when it came.
    let (_, vm) = h.get("/api/v1/virtualMachines/web1", &reader).await;
    assert_eq!(vm["agent"]["hooks"][0]["problem"], "NotFirst", "{vm:#}");
    assert_eq!(
        vm["agent"]["lastReportTimeUtc"],
        jitgate_api::time::format(old),
        "{vm:#}"
    );
    assert!(
        vm["agent"]["problems"]
            .to_string()
            .contains("no status report since"),
        "{vm:#}"
    );

    a.send(&AgentMsg::Pong { nonce: 0 }).await;
    // Fresh again: the agent reports (its audit head moved, so the report is written at
    // once), and the hook findings come back.
    a.send(&hooks()).await;
    a.send(&status_at(vec![], 4)).await;
    agent_view(h, &reader, |v| v["auditSeq"] == 4).await;
    let (codes, f) = findings(h).await;
    assert_eq!(codes, judged, "{f:#}");
}
