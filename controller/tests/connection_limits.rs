//! Connection-limited grants on the controller (docs/request-lifecycle.md "Connection
//! limits", docs/protocol.md "Connection limits"), the agent played by a test client over real
//! mutual TLS: a policy port's `maxConnections` is the maximum and the default of its
//! requests; a request above it is refused whole; a limited grant goes to a level-5 agent as
//! a signed `LimitedGrant` (booked or not) and never, in any form, to an older agent; an
//! unlimited request still sends the ordinary `Grant`. On SQLite, and on PostgreSQL with
//! `JIT_TEST_BACKEND=postgres`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::agent::{Agent, Creds, enroll};
use common::{Harness, one_port};
use jitgate_api::Role;
use jitgate_api::time::{format, now_ms};
use jitgate_proto::message::{AuditRecord, Outcome};
use jitgate_proto::{
    AgentMsg, ControllerMsg, GrantBody, LEVEL_CONNECTION_LIMITS, LEVEL_KEY_ROTATION,
    LimitedGrantBody,
};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// SSH at most 2 connections per grant; RDP unlimited.
fn policy() -> Value {
    json!([
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT3H", "maxConnections": 2},
        {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT3H"}
    ])
}

fn port(number: u16, source: &str, limit: Option<u32>) -> Value {
    let mut p = json!({"number": number, "allowedSourceAddressPrefix": source, "duration": "PT1H"});
    if let Some(n) = limit {
        p["maxConnections"] = json!(n);
    }
    one_port("web1", p)
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_default()
}

async fn setup() -> (Harness, String, Creds) {
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy("prod", policy()).await;
    let alice = h.token("alice", Role::Requester, "rg:prod").await;
    let c = enroll(&h, "web1").await;
    (h, alice, c)
}

async fn put_policy(h: &Harness, body: Value) -> (StatusCode, Value) {
    h.call(
        Method::PUT,
        "/api/v1/resourceGroups/prod/jitNetworkAccessPolicies/default",
        Some(&h.admin),
        Some(json!({ "ports": body })),
    )
    .await
}

/// The next grant-like message, verified: (grant, limit, starts_in_ms) for a `LimitedGrant`,
/// (grant, None, None) for a `Grant`.
fn verify(c: &Creds, m: ControllerMsg) -> (GrantBody, Option<u32>, Option<u64>) {
    match m {
        ControllerMsg::LimitedGrant(s) => {
            let b: LimitedGrantBody = s.verify(&c.signing, c.id).expect("limited grant");
            (b.grant, Some(b.max_connections.get()), b.starts_in_ms)
        }
        ControllerMsg::Grant(s) => (s.verify(&c.signing, c.id).expect("grant"), None, None),
        m => panic!("expected a grant, got {m:?}"),
    }
}

async fn applied(a: &mut Agent, g: &GrantBody) {
    a.send(&AgentMsg::GrantResult {
        grant_id: g.grant_id,
        seq: g.seq,
        outcome: Outcome::Applied {
            agent_unix_ms: now_ms(),
        },
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_limit_round_trips_and_bad_limits_change_nothing() {
    let (h, alice, _c) = setup().await;
    let (st, v) = h
        .get(
            "/api/v1/resourceGroups/prod/jitNetworkAccessPolicies/default",
            &h.admin,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ports"][0]["maxConnections"], 2, "{v}");
    assert!(v["ports"][1].get("maxConnections").is_none(), "{v}");
    // The policy update's activity entry carries the limit with the ports.
    let (_, log) = h.get("/api/v1/activityLog", &h.admin).await;
    let entries = log["value"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| {
            e["operation"] == "Update JIT Network Access Policy"
                && e["details"]["ports"][0]["maxConnections"] == 2
        }),
        "{log}"
    );

    // Out of range or not a number: refused whole, with the rule in words.
    let before = h.snapshot().await;
    for bad in [
        json!(0),
        json!(65_536),
        json!(-1),
        json!("many"),
        json!(1.5),
    ] {
        let mut p = policy();
        p[0]["maxConnections"] = bad.clone();
        let (st, v) = put_policy(&h, p).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maxConnections"),
            "{bad}: {v}"
        );
    }
    // A request above the policy's maximum: refused, nothing recorded.
    let (st, v) = h.initiate(&alice, port(22, "203.0.113.5", Some(3))).await;
    assert_eq!(
        (st, code(&v)),
        (StatusCode::BAD_REQUEST, "InvalidRequest"),
        "{v}"
    );
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("web1") && msg.contains("maxConnections 3 exceeds port 22's maximum of 2"),
        "{v}"
    );
    // A limit that is not one: refused at the boundary.
    for bad in [json!(0), json!(70_000), json!("x")] {
        let mut body = port(22, "203.0.113.5", None);
        body["virtualMachines"][0]["ports"][0]["maxConnections"] = bad.clone();
        let (st, v) = h.initiate(&alice, body).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains("maxConnections"),
            "{bad}: {v}"
        );
    }
    assert_eq!(h.snapshot().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_grant_never_reaches_an_agent_below_level_5() {
    let (h, alice, c) = setup().await;
    let mut old = Agent::connect(&c).await;
    let (_, items, _) = old.handshake_at(&c, 0, LEVEL_KEY_ROTATION).await;
    assert!(items.is_empty());

    // Asked for, or the policy's default: refused naming the VM; nothing written.
    let before = h.snapshot().await;
    for body in [
        port(22, "203.0.113.5", Some(1)),
        port(22, "203.0.113.5", None),
        port(3389, "203.0.113.5", Some(1)),
    ] {
        let (st, v) = h.initiate(&alice, body).await;
        assert_eq!((st, code(&v)), (StatusCode::CONFLICT, "AgentTooOld"), "{v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("web1") && msg.contains("level 4"), "{v}");
    }
    assert_eq!(h.snapshot().await, before);
    // Unlimited access still works, as an ordinary grant.
    let (st, v) = h.initiate(&alice, port(3389, "203.0.113.5", None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        v["virtualMachines"][0]["ports"][0]
            .get("maxConnections")
            .is_none(),
        "{v}"
    );
    let (g, limit, _) = verify(&c, old.recv().await);
    assert_eq!((g.port.get(), limit), (3389, None));
    applied(&mut old, &g).await;
    let id = v["id"].as_str().unwrap().to_string();
    h.status_within(&alice, &id, "Applied").await;
    // Nothing else reaches it.
    assert!(
        old.recv_within(Duration::from_millis(300)).await.is_none(),
        "an older agent was sent something more"
    );
    drop(old);

    // Accepted while the VM's agent was at level 5, then that agent is replaced by an older
    // one before delivery: the limited grant is held back, never sent in any form.
    let mut new = Agent::connect(&c).await;
    new.handshake_at(&c, g.seq, LEVEL_CONNECTION_LIMITS).await;
    drop(new);
    // The disconnect must not take the agent's recorded level with it.
    let (st, v) = h.initiate(&alice, port(22, "203.0.113.6", Some(1))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let mut old = Agent::connect(&c).await;
    let (_, items, (active, _)) = old.handshake_at(&c, g.seq, LEVEL_KEY_ROTATION).await;
    assert!(
        items.is_empty(),
        "an agent below level 5 was sent {items:?}"
    );
    assert!(
        old.recv_within(Duration::from_millis(300)).await.is_none(),
        "an older agent was sent something"
    );
    assert!(active.contains(&g.grant_id), "{active:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_5_agent_gets_limited_grants_and_unlimited_ones_stay_ordinary() {
    let (h, alice, c) = setup().await;
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CONNECTION_LIMITS).await;

    // Asked for: the request's limit.
    let (st, v) = h.initiate(&alice, port(22, "203.0.113.5", Some(1))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["maxConnections"], 1,
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let (g, limit, starts) = verify(&c, a.recv().await);
    assert_eq!(limit, Some(1));
    assert_eq!(starts, None);
    assert_eq!(g.request_id, id);
    assert_eq!(g.port.get(), 22);
    assert_eq!(g.source.to_string(), "203.0.113.5/32");
    applied(&mut a, &g).await;
    let v = h.status_within(&alice, &id, "Applied").await;
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["maxConnections"], 1,
        "{v}"
    );
    // The initiate's activity entry names the limit with the port.
    let (_, log) = h.get("/api/v1/activityLog", &h.admin).await;
    let entries = log["value"].as_array().cloned().unwrap_or_default();
    assert!(
        entries.iter().any(|e| {
            e["operation"] == "Initiate JIT Network Access"
                && e["details"]["ports"][0]["maxConnections"] == 1
        }),
        "{log}"
    );

    // Not asked for: the policy's.
    let (st, v) = h.initiate(&alice, port(22, "203.0.113.7", None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["maxConnections"], 2,
        "{v}"
    );
    let (g2, limit, _) = verify(&c, a.recv().await);
    assert_eq!((g2.port.get(), limit), (22, Some(2)));

    // No limit anywhere: the ordinary grant.
    let (st, v) = h.initiate(&alice, port(3389, "203.0.113.5", None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (g3, limit, _) = verify(&c, a.recv().await);
    assert_eq!((g3.port.get(), limit), (3389, None));

    // A policy without a limit still lets a request ask for one.
    let (st, v) = h.initiate(&alice, port(3389, "203.0.113.8", Some(5))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (g4, limit, _) = verify(&c, a.recv().await);
    assert_eq!((g4.port.get(), limit), (3389, Some(5)));

    // Booked: a LimitedGrant with the time to its start.
    let start = now_ms() + 3_600_000;
    let mut body = port(22, "203.0.113.9", Some(1));
    body["virtualMachines"][0]["ports"][0]["startTimeUtc"] = json!(format(start));
    let (st, v) = h.initiate(&alice, body).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (g5, limit, starts) = verify(&c, a.recv().await);
    assert_eq!(limit, Some(1));
    assert_eq!(g5.start_unix_ms, start);
    let starts = starts.expect("a booked limited grant says when it starts");
    assert!(
        (3_500_000..=3_600_000).contains(&starts),
        "starts in {starts} ms"
    );

    // A reconnect resends what is not acknowledged, still limited.
    drop(a);
    let mut a = Agent::connect(&c).await;
    let (_, items, _) = a.handshake_at(&c, g.seq, LEVEL_CONNECTION_LIMITS).await;
    let resent: Vec<(u16, Option<u32>)> = items
        .into_iter()
        .map(|m| {
            let (g, l, _) = verify(&c, m);
            (g.port.get(), l)
        })
        .collect();
    assert_eq!(
        resent,
        [(22, Some(2)), (3389, None), (3389, Some(5)), (22, Some(1))]
    );
    // `jit show --json` is the API's view: the limit per port.
    let (_, v) = h.get(&format!("/api/v1/requests/{id}"), &alice).await;
    assert_eq!(v["virtualMachines"][0]["ports"][0]["maxConnections"], 1);
}

/// A pending request keeps its limit to the approval, which needs the agent's level then too;
/// a policy lowered below it meanwhile denies it with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_final_approval_keeps_the_limit_and_rechecks_it() {
    let (h, alice, c) = setup().await;
    let rule = json!({"stages": [{"approvers": ["token:ann"], "required": 1}]});
    let mut p = policy();
    p[0]["approval"] = rule.clone();
    h.put_rg_policy("prod", p).await;
    let ann = h.token("ann", Role::Reader, "rg:prod").await;
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CONNECTION_LIMITS).await;

    let (st, v) = h.initiate(&alice, port(22, "203.0.113.5", None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "PendingApproval", "{v}");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["maxConnections"], 2,
        "{v}"
    );
    let id = v["id"].as_str().unwrap().to_string();
    let (st, v) = h
        .call(
            Method::POST,
            &format!("/api/v1/requests/{id}/approve"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (g, limit, _) = verify(&c, a.recv().await);
    assert_eq!((g.port.get(), limit), (22, Some(2)));

    // Asked for 2, the policy lowered to 1 before the approval: Denied, with the reason.
    let (st, v) = h.initiate(&alice, port(22, "203.0.113.6", Some(2))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let mut p = policy();
    p[0]["approval"] = rule;
    p[0]["maxConnections"] = json!(1);
    h.put_rg_policy("prod", p).await;
    let (st, v) = h
        .call(
            Method::POST,
            &format!("/api/v1/requests/{id}/approve"),
            Some(&ann),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, v) = h.get(&format!("/api/v1/requests/{id}"), &alice).await;
    assert_eq!(v["status"], "Denied", "{v}");
    assert_eq!(
        v["virtualMachines"][0]["ports"][0]["statusReason"], "ConnectionsExceedMaximum",
        "{v}"
    );
    // The lowered policy reaches the agent; no grant does.
    while let Some(m) = a.recv_within(Duration::from_millis(300)).await {
        assert!(
            matches!(m, ControllerMsg::Policy(_)),
            "a denied request sent {m:?}"
        );
    }
}

/// The agent's connection records, stored; the controller's acknowledgement of them.
async fn deliver(a: &mut Agent, lines: &[String]) {
    let records = lines
        .iter()
        .enumerate()
        .map(|(i, line)| AuditRecord {
            seq: i as u64 + 1,
            id: format!("r{}", i + 1),
            line: line.clone(),
        })
        .collect::<Vec<_>>();
    let n = records.len() as u64;
    a.send(&AgentMsg::Audit { records }).await;
    loop {
        match a.recv().await {
            ControllerMsg::AuditAck { up_to } => {
                assert_eq!(up_to, n);
                return;
            }
            ControllerMsg::Ping { .. } | ControllerMsg::Policy(_) => {}
            m => panic!("expected the audit acknowledgement, got {m:?}"),
        }
    }
}

/// A CSV export read by its header: each row as (column → cell).
fn csv_rows(text: &str) -> Vec<std::collections::HashMap<String, String>> {
    let mut r = csv::ReaderBuilder::new().from_reader(text.as_bytes());
    let header: Vec<String> = r
        .headers()
        .expect("header")
        .iter()
        .map(String::from)
        .collect();
    r.records()
        .map(|rec| {
            let rec = rec.expect("row");
            header
                .iter()
                .cloned()
                .zip(rec.iter().map(String::from))
                .collect()
        })
        .collect()
}

async fn text(h: &Harness, path: &str) -> String {
    let (st, v) = h.get(path, &h.admin).await;
    assert_eq!(st, StatusCode::OK, "{path}: {v}");
    v.as_str().expect("CSV text").to_string()
}

/// The CSV exports name the limit: the connection history per connection, with its grant's
/// limit (empty for an unlimited grant, a local one, or a denial without a grant), and the
/// activity log's `details` of the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_exports_show_each_grants_connection_limit() {
    let (h, alice, c) = setup().await;
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, 0, LEVEL_CONNECTION_LIMITS).await;
    let (st, v) = h.initiate(&alice, port(22, "203.0.113.5", Some(1))).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let limited_request = v["id"].as_str().unwrap().to_string();
    let (limited, limit, _) = verify(&c, a.recv().await);
    assert_eq!(limit, Some(1));
    let (st, v) = h.initiate(&alice, port(3389, "203.0.113.5", None)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (unlimited, limit, _) = verify(&c, a.recv().await);
    assert_eq!(limit, None);
    let local = uuid::Uuid::new_v4();
    let record = |n: u32, kind: &str, port: u16, extra: String| {
        format!(
            r#"{{"id":"r{n}","seq":{n},"time":"2026-01-31T10:00:0{n}Z","kind":"{kind}","actor":"kernel","source":"203.0.113.5:4000{n}","protocol":"tcp","port":{port}{extra},"prev":"x","hash":"y"}}"#
        )
    };
    deliver(
        &mut a,
        &[
            record(
                1,
                "connection.admitted",
                22,
                format!(r#","grantId":"{}""#, limited.grant_id),
            ),
            record(
                2,
                "connection.admitted",
                3389,
                format!(r#","grantId":"{}""#, unlimited.grant_id),
            ),
            record(
                3,
                "connection.admitted",
                22,
                format!(r#","grantId":"{local}""#),
            ),
            record(4, "connection.denied", 22, r#","reason":"no_grant""#.into()),
        ],
    )
    .await;

    let (_, v) = h
        .get(
            "/api/v1/virtualMachines/web1/connections?denied=true",
            &h.admin,
        )
        .await;
    let list = v["value"].as_array().cloned().unwrap_or_default();
    let by_port_and_grant = |port: u16, grant: Option<String>| {
        list.iter()
            .find(|c| c["port"] == port && c["grantId"].as_str().map(String::from) == grant)
            .unwrap_or_else(|| panic!("no connection on {port} under {grant:?}: {v}"))
            .clone()
    };
    assert_eq!(
        by_port_and_grant(22, Some(limited.grant_id.to_string()))["maxConnections"],
        1,
        "{v}"
    );
    assert!(
        by_port_and_grant(3389, Some(unlimited.grant_id.to_string()))
            .get("maxConnections")
            .is_none(),
        "{v}"
    );

    // The CSV (the portal's export is the same text: portal_fleet.rs).
    let csv = text(
        &h,
        "/api/v1/virtualMachines/web1/connections?denied=true&format=csv",
    )
    .await;
    assert!(
        csv.lines()
            .next()
            .is_some_and(|l| l.ends_with(",agentId,maxConnections")),
        "{csv}"
    );
    let rows = csv_rows(&csv);
    assert_eq!(rows.len(), 4, "{csv}");
    let limit_of = |grant: &str| -> Vec<&str> {
        rows.iter()
            .filter(|r| r["grantId"] == grant)
            .map(|r| r["maxConnections"].as_str())
            .collect()
    };
    assert_eq!(limit_of(&limited.grant_id.to_string()), ["1"], "{csv}");
    assert_eq!(limit_of(&unlimited.grant_id.to_string()), [""], "{csv}");
    assert_eq!(limit_of(&local.to_string()), [""], "{csv}");
    assert_eq!(limit_of(""), [""], "{csv}");

    // The activity log's CSV: the request's entry carries the limit with its port.
    let csv = text(&h, "/api/v1/activityLog?format=csv").await;
    let rows = csv_rows(&csv);
    let initiate = rows
        .iter()
        .find(|r| {
            r["operation"] == "Initiate JIT Network Access" && r["requestId"] == limited_request
        })
        .unwrap_or_else(|| panic!("no entry of the limited request: {csv}"));
    let details: Value = serde_json::from_str(&initiate["details"]).expect("details JSON");
    assert_eq!(details["ports"][0]["maxConnections"], 1, "{csv}");
}
