//! The agent side of the controller, played by a test client built from jitgate-proto,
//! tokio-rustls and rcgen: enrolment over real HTTPS, the channel over real mutual TLS on
//! loopback, a real SQLite file.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::type_complexity)]

mod common;

use std::time::Duration;

use common::agent::{Agent, csr, enroll, enroll_raw};
use common::{Harness, one_port};
use jitgate_api::Role;
use jitgate_proto::message::{AuditRecord, Outcome, ReportedGrant};
use jitgate_proto::{AgentMsg, ControllerMsg, GrantBody, RevokeBody};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Row;
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

fn policy_prod() -> Value {
    json!([
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT3H", "onExpiry": "keep"},
        {"number": 3389, "protocol": "*", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT1H", "onExpiry": "cut"}
    ])
}

async fn setup() -> (Harness, String) {
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy("prod", policy_prod()).await;
    let req = h.token("alice", Role::Requester, "rg:prod").await;
    (h, req)
}

async fn count(h: &Harness, sql: &str) -> i64 {
    sqlx::query(sql)
        .fetch_one(h.app().db.pool())
        .await
        .expect("count")
        .try_get::<i64, _>(0)
        .expect("n")
}

async fn activity_ops(h: &Harness, op: &str, outcome: &str) -> i64 {
    sqlx::query("SELECT COUNT(*) FROM activity WHERE operation = $1 AND outcome = $2")
        .bind(op)
        .bind(outcome)
        .fetch_one(h.app().db.pool())
        .await
        .expect("count")
        .try_get::<i64, _>(0)
        .expect("n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrolment_token_is_single_use_and_failures_write_nothing_but_the_log() {
    let (h, _) = setup().await;
    let (token, _) = h
        .app()
        .fleet
        .create_enroll_token(&jitgate_controller::authz::Caller::local(), "web1")
        .await
        .expect("token");
    assert!(token.starts_with("jitenroll_") && token.len() == 10 + 64);
    let key = rcgen::KeyPair::generate().expect("key");

    // A bad CSR: refused, token still unused.
    let before = count(&h, "SELECT COUNT(*) FROM agents").await;
    let (st, v) = enroll_raw(
        &h,
        &token,
        "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    )
    .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["code"], "InvalidCsr");
    assert_eq!(count(&h, "SELECT COUNT(*) FROM agents").await, before);

    // First use works.
    let (st, v) = enroll_raw(&h, &token, &csr(&key)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert!(
        v["certificatePem"]
            .as_str()
            .expect("cert")
            .contains("BEGIN CERTIFICATE")
    );
    assert!(
        v["grantSigningKeyPem"]
            .as_str()
            .expect("k")
            .contains("BEGIN PUBLIC KEY")
    );
    let endpoint = v["agentEndpoint"].as_str().expect("endpoint");
    assert_eq!(
        endpoint,
        h.server
            .as_ref()
            .expect("server")
            .agent_addr
            .to_string()
            .as_str()
    );

    // Second use, unknown and malformed tokens: refused, nothing written but the log.
    let agents = count(&h, "SELECT COUNT(*) FROM agents").await;
    for t in [
        token.clone(),
        format!("jitenroll_{}", "ab".repeat(32)),
        "jit_nonsense".into(),
    ] {
        let (st, v) = enroll_raw(&h, &t, &csr(&key)).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
        assert_eq!(v["error"]["code"], "InvalidEnrollmentToken");
    }
    assert_eq!(count(&h, "SELECT COUNT(*) FROM agents").await, agents);
    assert_eq!(activity_ops(&h, "Enroll Agent", "Succeeded").await, 1);
    assert_eq!(activity_ops(&h, "Enroll Agent", "Failed").await, 4);

    // An expired token is refused.
    let (t2, _) = h
        .app()
        .fleet
        .create_enroll_token(&jitgate_controller::authz::Caller::local(), "web2")
        .await
        .expect("token");
    sqlx::query("UPDATE enroll_tokens SET expires_ms = 1 WHERE vm = 'web2'")
        .execute(h.app().db.pool())
        .await
        .expect("expire");
    let (st, _) = enroll_raw(&h, &t2, &csr(&key)).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    // The chain still verifies.
    let (_, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_flow_signed_acked_revoked_and_not_resent() {
    let (h, alice) = setup().await;
    let c = enroll(&h, "web1").await;
    let mut a = Agent::connect(&c).await;
    let (policy, items, (active, _)) = a.handshake(&c, 0).await;
    assert!(items.is_empty());
    assert!(active.is_empty());
    assert!(policy.seq > 0);
    let shown: Vec<String> = policy.ports.iter().map(|p| p.to_string()).collect();
    assert_eq!(policy.ports.len(), 3, "{shown:?}");

    // Initiate: a signed grant is pushed at once.
    let (st, req) = h
        .initiate(
            &alice,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{req}");
    let rid = req["id"].as_str().expect("id").to_string();
    let g: GrantBody = match a.recv_within(Duration::from_secs(1)).await {
        Some(ControllerMsg::Grant(s)) => {
            // Another agent id does not verify; the right one does.
            assert!(s.verify(&c.signing, Uuid::nil()).is_err());
            s.verify(&c.signing, c.id).expect("grant verifies")
        }
        m => panic!("expected a grant within 1 s, got {m:?}"),
    };
    assert_eq!(g.request_id, rid);
    assert_eq!(g.port.get(), 22);
    assert_eq!(g.source.to_string(), "203.0.113.5/32");
    assert_eq!(g.requester, "alice");
    assert!(g.remaining_ms > 3_500_000 && g.remaining_ms <= 3_600_000);
    assert!(g.seq > 0);

    // Applied: the request becomes Applied.
    a.send(&AgentMsg::GrantResult {
        grant_id: g.grant_id,
        seq: g.seq,
        outcome: Outcome::Applied { agent_unix_ms: 1 },
    })
    .await;
    let mut applied = false;
    for _ in 0..50 {
        let (_, v) = h.get(&format!("/api/v1/requests/{rid}"), &alice).await;
        if v["status"] == "Applied" {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "request became Applied");

    // Revoke: a signed Revoke arrives within 1 s.
    let (st, v) = h
        .call(
            Method::POST,
            &format!("/api/v1/requests/{rid}/revoke"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let r: RevokeBody = match a.recv_within(Duration::from_secs(1)).await {
        Some(ControllerMsg::Revoke(s)) => s.verify(&c.signing, c.id).expect("revoke verifies"),
        m => panic!("expected a revoke within 1 s, got {m:?}"),
    };
    assert_eq!(r.grant_id, g.grant_id);
    assert_eq!(r.reason, "UserRequested");
    assert!(r.seq > g.seq);
    a.send(&AgentMsg::RevokeResult {
        grant_id: r.grant_id,
        seq: r.seq,
        outcome: Outcome::Applied { agent_unix_ms: 2 },
    })
    .await;

    // A second grant, then reconnect with the high-water mark: nothing is resent, the
    // active list names the live grant.
    let (_, req2) = h
        .initiate(
            &alice,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.6", "duration": "PT1H"}),
            ),
        )
        .await;
    let g2 = match a.recv().await {
        ControllerMsg::Grant(s) => s.verify(&c.signing, c.id).expect("grant"),
        m => panic!("expected grant, got {m:?}"),
    };
    drop(a);
    let mut a = Agent::connect(&c).await;
    let (_, items, (active, up_to)) = a.handshake(&c, g2.seq).await;
    assert!(items.is_empty(), "nothing resent: {items:?}");
    assert_eq!(active, vec![g2.grant_id]);
    assert_eq!(up_to, g2.seq);

    // The ack was lost: the agent's report of what it holds recovers it. A local grant
    // reported twice is logged once.
    let local = Uuid::new_v4();
    let report = |id: Uuid, origin: &str| ReportedGrant {
        grant_id: id,
        origin: origin.into(),
        protocol: jitgate_common::Protocol::Tcp,
        port: jitgate_common::Port::new(22).expect("port"),
        source: "198.51.100.7/32".parse().expect("prefix"),
        end_unix_ms: jitgate_api::time::now_ms() + 60_000,
        requester: "root".into(),
    };
    for _ in 0..2 {
        a.send(&AgentMsg::Grants {
            grants: vec![report(g2.grant_id, "controller"), report(local, "local")],
        })
        .await;
    }
    let rid2 = req2["id"].as_str().expect("id");
    let mut applied = false;
    for _ in 0..50 {
        let (_, v) = h.get(&format!("/api/v1/requests/{rid2}"), &alice).await;
        if v["status"] == "Applied" {
            applied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(applied, "lost ack recovered from the report");
    // Both reports are handled before the answer to a later message.
    assert_eq!(audit(&mut a, vec![]).await, 0);
    assert_eq!(
        activity_ops(&h, "Local Break-Glass JIT Network Access", "Succeeded").await,
        1
    );

    // Reconnect from scratch (high water 0): the revoked grant is not resent, its
    // revocation is; the live grant is.
    drop(a);
    let mut a = Agent::connect(&c).await;
    let (_, items, _) = a.handshake(&c, 0).await;
    let mut grants = Vec::new();
    let mut revokes = Vec::new();
    for m in items {
        match m {
            ControllerMsg::Grant(s) => grants.push(s.verify(&c.signing, c.id).expect("g").grant_id),
            ControllerMsg::Revoke(s) => {
                revokes.push(s.verify(&c.signing, c.id).expect("r").grant_id)
            }
            _ => {}
        }
    }
    assert_eq!(grants, vec![g2.grant_id]);
    assert_eq!(revokes, vec![g.grant_id]);

    // A rejected grant is logged.
    a.send(&AgentMsg::GrantResult {
        grant_id: g2.grant_id,
        seq: g2.seq,
        outcome: Outcome::Rejected {
            reason: "replay".into(),
        },
    })
    .await;
    let mut logged = false;
    for _ in 0..50 {
        if activity_ops(&h, "Agent Rejected JIT Network Access", "Failed").await == 1 {
            logged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged);

    // Fleet view.
    a.send(&AgentMsg::Heartbeat(Box::new(
        jitgate_proto::message::Heartbeat {
            interfaces: vec![("eth0".into(), "native".into())],
            protected: policy.ports.clone(),
            listening: vec![],
            active_grants: 2,
            audit_head: "ab".repeat(32),
            audit_seq: 9,
        },
    )))
    .await;
    let reader = h.token("rita", Role::Reader, "*").await;
    let mut seen = false;
    for _ in 0..50 {
        let (st, v) = h.get("/api/v1/agents", &reader).await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let x = &v["value"][0];
        if x["activeGrants"] == 2 {
            assert_eq!(x["virtualMachine"], "web1");
            assert_eq!(x["agentId"], c.id.to_string());
            assert_eq!(x["connection"], "online");
            assert_eq!(x["interfaces"][0], "eth0 (native)");
            assert_eq!(x["auditSeq"], 9);
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(seen, "heartbeat shown in the fleet view");

    // A status report: an interface with an address and no enforcement, an unhealthy pin,
    // the agent's clock 5 minutes ahead: degraded, with the reasons and the offset.
    let status = |addresses: Vec<(String, String)>, problems: Vec<String>| {
        AgentMsg::Status(Box::new(jitgate_proto::message::StatusReport {
            heartbeat: jitgate_proto::message::Heartbeat {
                interfaces: vec![("eth0".into(), "generic".into())],
                protected: policy.ports.clone(),
                listening: vec![(jitgate_common::Protocol::Tcp, "0.0.0.0:22".into())],
                active_grants: 3,
                audit_head: "cd".repeat(32),
                audit_seq: 10,
            },
            addresses,
            problems,
            agent_unix_ms: jitgate_api::time::now_ms() + 300_000,
        }))
    };
    a.send(&status(
        vec![
            ("eth0".into(), "192.0.2.11".into()),
            ("eth1".into(), "203.0.113.9".into()),
        ],
        vec!["eth0: link no longer pinned (detached?)".into()],
    ))
    .await;
    let agent_view = |v: &serde_json::Value| v["value"][0].clone();
    let mut x = serde_json::Value::Null;
    for _ in 0..50 {
        x = agent_view(&h.get("/api/v1/agents", &reader).await.1);
        if x["activeGrants"] == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(x["connection"], "degraded", "{x}");
    let problems = x["problems"].to_string();
    assert!(
        problems.contains("eth1 has an address (203.0.113.9)"),
        "{x}"
    );
    assert!(problems.contains("no longer pinned"), "{x}");
    assert_eq!(x["listening"][0], "tcp 0.0.0.0:22", "{x}");
    let off = x["clockOffsetMs"].as_i64().expect("offset");
    assert!((290_000..=310_000).contains(&off), "{x}");
    let (_, vms) = h.get("/api/v1/virtualMachines", &reader).await;
    assert_eq!(vms["value"][1]["name"], "web1", "{vms}");
    assert_eq!(vms["value"][1]["status"], "degraded", "{vms}");
    // Healthy again: online.
    a.send(&status(vec![("eth0".into(), "192.0.2.11".into())], vec![]))
        .await;
    let mut healthy = false;
    for _ in 0..50 {
        x = agent_view(&h.get("/api/v1/agents", &reader).await.1);
        if x["connection"] == "online" {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(healthy, "{x}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersession_pushes_the_new_grant_then_revokes_the_old() {
    let (h, alice) = setup().await;
    let bob = h.token("bob", Role::Requester, "vm:web1").await;
    let c = enroll(&h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    let body = one_port(
        "web1",
        json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
    );
    h.initiate(&alice, body.clone()).await;
    let g1 = match a.recv().await {
        ControllerMsg::Grant(s) => s.verify(&c.signing, c.id).expect("g1"),
        m => panic!("{m:?}"),
    };
    h.initiate(&bob, body).await;
    let g2 = match a.recv().await {
        ControllerMsg::Grant(s) => s.verify(&c.signing, c.id).expect("g2"),
        m => panic!("{m:?}"),
    };
    let r = match a.recv().await {
        ControllerMsg::Revoke(s) => s.verify(&c.signing, c.id).expect("r"),
        m => panic!("{m:?}"),
    };
    assert_eq!(r.grant_id, g1.grant_id);
    assert_eq!(r.reason, "NewerRequestInitiated");
    assert!(g1.seq < g2.seq && g2.seq < r.seq);

    // A policy change reaches the connected agent, signed, with a higher version.
    let (p0, _, _) = {
        let mut b = Agent::connect(&c).await;
        b.handshake(&c, r.seq).await
    };
    h.put_vm_policy(
        "web1",
        json!([{"number": 2222, "protocol": "UDP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT1H"}]),
    )
    .await;
    let p1 = loop {
        match a.recv().await {
            ControllerMsg::Policy(p) => break p.verify(&c.signing, c.id).expect("policy"),
            ControllerMsg::Revoke(_) | ControllerMsg::Grant(_) => continue,
            m => panic!("{m:?}"),
        }
    };
    assert!(p1.seq > p0.seq);
    let shown: Vec<String> = p1.ports.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown, vec!["2222/udp:keep".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_that_connection_and_revoked_agents_are_refused() {
    let (h, _) = setup().await;
    let c1 = enroll(&h, "web1").await;
    let c2 = enroll(&h, "web2").await;
    let mut good = Agent::connect(&c2).await;
    good.handshake(&c2, 0).await;

    // Garbage (unknown version), an oversized length, undecodable bytes, no Hello first.
    let bad: [&[u8]; 3] = [
        &[0, 0, 0, 3, 9, 9, 9],
        &[0xff, 0xff, 0xff, 0xff, 1],
        &[0, 0, 0, 3, 1, 0xff, 0xff],
    ];
    for bytes in bad {
        let mut a = Agent::connect(&c1).await;
        a.hello(&c1, 0, 0).await;
        a.wr.write_all(bytes).await.expect("write");
        a.wr.flush().await.expect("flush");
        assert!(a.closed_within(Duration::from_secs(3)).await, "{bytes:?}");
    }
    let mut a = Agent::connect(&c1).await;
    a.send(&AgentMsg::Pong { nonce: 1 }).await;
    assert!(a.closed_within(Duration::from_secs(3)).await, "no Hello");
    // A Hello naming another agent.
    let mut a = Agent::connect(&c1).await;
    a.hello(&c2, 0, 0).await;
    assert!(
        a.closed_within(Duration::from_secs(3)).await,
        "wrong agent id"
    );

    // The other agent is still served.
    good.send(&AgentMsg::Audit {
        records: vec![AuditRecord {
            seq: 1,
            id: "e1".into(),
            line: "{}".into(),
        }],
    })
    .await;
    match good.recv().await {
        ControllerMsg::AuditAck { up_to } => assert_eq!(up_to, 1),
        m => panic!("{m:?}"),
    }

    // Revocation closes the live connection and refuses the credential from then on.
    h.app()
        .fleet
        .revoke_agents(&jitgate_controller::authz::Caller::local(), "web2")
        .await
        .expect("revoke");
    assert!(
        good.closed_within(Duration::from_secs(3)).await,
        "live connection closed"
    );
    let mut again = Agent::connect(&c2).await;
    again.hello(&c2, 0, 0).await;
    assert!(
        again.recv_within(Duration::from_secs(3)).await.is_none(),
        "revoked agent refused"
    );

    // Re-enrolling web1 revokes its previous credential too.
    let c1b = enroll(&h, "web1").await;
    let mut old = Agent::connect(&c1).await;
    old.hello(&c1, 0, 0).await;
    assert!(old.recv_within(Duration::from_secs(3)).await.is_none());
    let mut new = Agent::connect(&c1b).await;
    new.handshake(&c1b, 0).await;
}

async fn audit(a: &mut Agent, records: Vec<AuditRecord>) -> u64 {
    a.send(&AgentMsg::Audit { records }).await;
    match a.recv().await {
        ControllerMsg::AuditAck { up_to } => up_to,
        m => panic!("{m:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_records_are_stored_once_and_acked_contiguously() {
    let (h, _) = setup().await;
    let c = enroll(&h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    let rec = |seq: u64| AuditRecord {
        seq,
        id: format!("evt-{seq}"),
        line: format!("{{\"seq\":{seq}}}"),
    };
    assert_eq!(audit(&mut a, vec![rec(1), rec(2), rec(3)]).await, 3);
    // Sent twice (a lost ack): stored once.
    assert_eq!(audit(&mut a, vec![rec(1), rec(2), rec(3)]).await, 3);
    // A gap: the ack stays at the last contiguous seq.
    assert_eq!(audit(&mut a, vec![rec(5)]).await, 3);
    assert_eq!(audit(&mut a, vec![rec(4)]).await, 5);
    assert_eq!(count(&h, "SELECT COUNT(*) FROM agent_audit").await, 5);
    // After a reconnect with the acked mark, a resend is still stored once.
    drop(a);
    let mut a = Agent::connect(&c).await;
    a.hello(&c, 0, 5).await;
    loop {
        if let ControllerMsg::Active { .. } = a.recv().await {
            break;
        }
    }
    a.send(&AgentMsg::Audit {
        records: vec![rec(5), rec(6)],
    })
    .await;
    match a.recv().await {
        ControllerMsg::AuditAck { up_to } => assert_eq!(up_to, 6),
        m => panic!("{m:?}"),
    }
    assert_eq!(count(&h, "SELECT COUNT(*) FROM agent_audit").await, 6);
    let (_, v) = h.get("/api/v1/agents", &h.admin).await;
    assert_eq!(v["value"][0]["auditRecords"], 6);
}

/// What the agent delivered becomes the VM's connection history: admitted connections with
/// the request and requestor behind the grant (or the local actor of a break-glass grant),
/// denials on request, CSV, and the raw records by kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_history_from_delivered_records() {
    let (h, alice) = setup().await;
    let (st, req) = h
        .initiate(
            &alice,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{req}");
    let rid = req["id"].as_str().expect("request id").to_string();
    let gid: String = sqlx::query("SELECT id FROM grants WHERE request_id = $1")
        .bind(&rid)
        .fetch_one(h.app().db.pool())
        .await
        .expect("grant")
        .try_get(0)
        .expect("id");
    let c = enroll(&h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    let local = Uuid::new_v4().to_string();
    let line = |seq: u64, t: &str, kind: &str, extra: &str| AuditRecord {
        seq,
        id: format!("r{seq}"),
        line: format!(
            r#"{{"id":"r{seq}","seq":{seq},"time":"{t}","kind":"{kind}","actor":"kernel"{extra},"prev":"x","hash":"y"}}"#
        ),
    };
    let records = vec![
        line(
            1,
            "2026-01-31T10:00:00Z",
            "connection.denied",
            r#","source":"198.51.100.9:40000","protocol":"tcp","port":22,"reason":"no_grant""#,
        ),
        line(
            2,
            "2026-01-31T10:00:01Z",
            "connection.admitted",
            &format!(
                r#","source":"203.0.113.5:40001","protocol":"tcp","port":22,"grantId":"{gid}""#
            ),
        ),
        AuditRecord {
            seq: 3,
            id: "r3".into(),
            line: format!(
                r#"{{"id":"r3","seq":3,"time":"2026-01-31T10:00:02Z","kind":"grant.applied","actor":"local:root (pid 7)","grantId":"{local}","prev":"x","hash":"y"}}"#
            ),
        },
        line(
            4,
            "2026-01-31T10:00:03Z",
            "connection.admitted",
            &format!(
                r#","source":"203.0.113.6:40002","protocol":"tcp","port":22,"grantId":"{local}""#
            ),
        ),
        // Not JSON: stored as evidence, in no connection view.
        AuditRecord {
            seq: 5,
            id: "r5".into(),
            line: "garbage".into(),
        },
    ];
    assert_eq!(audit(&mut a, records).await, 5);

    let (st, v) = h
        .get("/api/v1/virtualMachines/web1/connections", &h.admin)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let list = v["value"].as_array().expect("list").clone();
    assert_eq!(list.len(), 2, "{v}");
    // Newest first: the break-glass session, then the one under alice's request.
    assert_eq!(list[0]["grantOrigin"], "local", "{v}");
    assert_eq!(list[0]["requestor"], "local:root (pid 7)", "{v}");
    assert_eq!(list[1]["grantOrigin"], "controller", "{v}");
    assert_eq!(list[1]["requestId"], rid.as_str(), "{v}");
    assert_eq!(list[1]["requestor"], "alice", "{v}");
    assert_eq!(list[1]["source"], "203.0.113.5:40001", "{v}");
    assert_eq!(list[1]["timeUtc"], "2026-01-31T10:00:01.000Z", "{v}");

    let (_, v) = h
        .get(
            "/api/v1/virtualMachines/web1/connections?denied=true&from=2026-01-31T10:00:00Z&to=2026-01-31T10:00:02Z",
            &h.admin,
        )
        .await;
    let list = v["value"].as_array().expect("list");
    assert_eq!(list.len(), 2, "{v}");
    assert_eq!(list[1]["outcome"], "denied", "{v}");
    assert_eq!(list[1]["reason"], "no_grant", "{v}");

    let (st, text) = h
        .get(
            "/api/v1/virtualMachines/web1/connections?format=csv",
            &h.admin,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let text = text.as_str().expect("csv text").to_string();
    let mut rows = text.lines();
    assert!(
        rows.next()
            .is_some_and(|r| r.starts_with("timeUtc,virtualMachine,outcome,"))
    );
    assert_eq!(rows.count(), 2, "{text}");

    let (_, v) = h
        .get(
            "/api/v1/virtualMachines/web1/agentAudit?kind=grant.applied",
            &h.admin,
        )
        .await;
    assert_eq!(v["value"].as_array().map(Vec::len), Some(1), "{v}");
    let (_, v) = h
        .get("/api/v1/virtualMachines/web1/agentAudit", &h.admin)
        .await;
    assert_eq!(v["value"].as_array().map(Vec::len), Some(5), "{v}");
    assert_eq!(v["value"][0]["record"], "garbage", "{v}");

    // Another VM's history is empty; a reader outside the VM's scope is refused.
    let (_, v) = h
        .get("/api/v1/virtualMachines/web2/connections", &h.admin)
        .await;
    assert_eq!(v["value"].as_array().map(Vec::len), Some(0), "{v}");
    let dev = h.token("dev-reader", Role::Reader, "rg:dev").await;
    let (st, _) = h
        .get("/api/v1/virtualMachines/web1/connections", &dev)
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

/// Agent audit lines as an agent writes them (agent/src/audit.rs): the body's JSON, then the
/// hash; record `checkpoint_at` is an `audit.checkpoint` signed with `key`, or carrying the
/// signature `copied` (made over another chain).
fn agent_lines(
    agent: &str,
    key: Option<&rcgen::KeyPair>,
    copied: Option<&str>,
    reasons: &[&str],
    checkpoint_at: u64,
) -> Vec<String> {
    let mut prev = jitgate_proto::audit::GENESIS_HASH.to_string();
    let mut out = Vec::new();
    for (i, reason) in reasons.iter().enumerate() {
        let seq = i as u64 + 1;
        let mut body = serde_json::Map::new();
        body.insert("id".into(), json!(format!("evt-{seq}")));
        body.insert("seq".into(), json!(seq));
        body.insert("time".into(), json!("2026-11-27T02:00:00Z"));
        if seq == checkpoint_at {
            body.insert("kind".into(), json!("audit.checkpoint"));
            body.insert("actor".into(), json!("agent"));
            if let Some(k) = key {
                let m = jitgate_proto::audit::agent_checkpoint_message(agent, seq - 1, &prev);
                let sig = jitgate_proto::audit::agent_sign(&k.serialize_pem(), &m).expect("sign");
                body.insert("signature".into(), json!(sig));
            }
            if let Some(sig) = copied {
                body.insert("signature".into(), json!(sig));
            }
        } else {
            body.insert("kind".into(), json!("grant.applied"));
            body.insert("actor".into(), json!("root"));
            body.insert("reason".into(), json!(reason));
        }
        body.insert("prev".into(), json!(prev));
        let text = serde_json::to_string(&body).expect("json");
        let hash = jitgate_proto::audit::agent_record_hash(&prev, text.as_bytes());
        out.push(format!("{},\"hash\":\"{hash}\"}}", &text[..text.len() - 1]));
        prev = hash;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_checkpoints_verify_and_a_database_rewrite_fails() {
    let (h, _) = setup().await;
    let c = enroll(&h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    let id = c.id.to_string();
    let reasons = ["INC-1", "INC-2", "", "INC-4"];
    let lines = agent_lines(&id, Some(&c.key), None, &reasons, 3);
    let records = lines
        .iter()
        .enumerate()
        .map(|(i, l)| AuditRecord {
            seq: i as u64 + 1,
            id: format!("evt-{}", i + 1),
            line: l.clone(),
        })
        .collect();
    assert_eq!(audit(&mut a, records).await, 4);
    let verify = || h.get("/api/v1/virtualMachines/web1/agentAudit/verify", &h.admin);
    let (st, v) = verify().await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["ok"], true, "{v}");
    let r = &v["agents"][0];
    assert_eq!(
        (
            r["checkpoints"].clone(),
            r["coveredSeq"].clone(),
            r["uncovered"].clone()
        ),
        (json!(1), json!(2), json!(2)),
        "{v}"
    );
    // A database writer rewrites record 1 and recomputes every later hash (the checkpoint
    // record keeps the agent's signature, which it cannot remake): the chain holds, the
    // signature does not.
    let mut reasons = reasons;
    reasons[0] = "INC-9";
    let signed: Value = serde_json::from_str(&lines[2]).expect("line");
    let sig = signed["signature"].as_str().expect("signature");
    let forged = agent_lines(&id, None, Some(sig), &reasons, 3);
    for (i, l) in forged.iter().enumerate() {
        sqlx::query("UPDATE agent_audit SET line = $1 WHERE agent_id = $2 AND seq = $3")
            .bind(l)
            .bind(&id)
            .bind(i as i64 + 1)
            .execute(h.app().db.pool())
            .await
            .expect("rewrite");
    }
    let (_, v) = verify().await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["agents"][0]["firstBadSeq"], 3, "{v}");
    assert!(
        v["agents"][0]["problem"]
            .as_str()
            .expect("p")
            .contains("signature"),
        "{v}"
    );
    // Signing with its own key and substituting its own certificate does not help: the
    // certificate must come from the controller CA.
    let mallory = rcgen::KeyPair::generate().expect("key");
    let own = rcgen::CertificateParams::new(vec!["mallory".into()])
        .expect("params")
        .self_signed(&mallory)
        .expect("cert");
    for (i, l) in agent_lines(&id, Some(&mallory), None, &reasons, 3)
        .iter()
        .enumerate()
    {
        sqlx::query("UPDATE agent_audit SET line = $1 WHERE agent_id = $2 AND seq = $3")
            .bind(l)
            .bind(&id)
            .bind(i as i64 + 1)
            .execute(h.app().db.pool())
            .await
            .expect("rewrite");
    }
    sqlx::query("UPDATE agents SET cert_pem = $1 WHERE id = $2")
        .bind(own.pem())
        .bind(&id)
        .execute(h.app().db.pool())
        .await
        .expect("cert");
    let (_, v) = verify().await;
    assert_eq!(v["ok"], false, "{v}");
    assert!(
        v["agents"][0]["problem"]
            .as_str()
            .expect("p")
            .contains("CA"),
        "{v}"
    );
}

/// Two controllers in one process on two databases (what HA will run in one test): each
/// wakes only its own agent connections and knows only its own agents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_in_one_process_keep_their_wakeups_and_agents_apart() {
    let (a, alice_a) = setup().await;
    let (b, alice_b) = setup().await;
    let (ca, cb) = (enroll(&a, "web1").await, enroll(&b, "web1").await);
    let mut agent_a = Agent::connect(&ca).await;
    agent_a.handshake(&ca, 0).await;
    // Presence: A's agent is connected to A only; B's to nobody yet.
    let live = |h: &Harness| h.app().presence.live_agents();
    assert_eq!(live(&a), [ca.id.to_string()]);
    assert!(live(&b).is_empty());
    let mut agent_b = Agent::connect(&cb).await;
    agent_b.handshake(&cb, 0).await;
    assert_eq!(live(&b), [cb.id.to_string()]);
    assert_eq!(live(&a), [ca.id.to_string()]);
    let (_, fleet_a) = a.get("/api/v1/agents", &a.admin).await;
    assert_eq!(fleet_a["value"][0]["connection"], "online", "{fleet_a}");
    assert_eq!(fleet_a["value"].as_array().map(Vec::len), Some(1));
    // Wakeups: a grant committed on A wakes A's connections of that VM only. (Each
    // controller's catch-up wakes its own earlier commits once more: let it pass first.)
    a.caught_up().await;
    b.caught_up().await;
    let (sub_a, sub_b) = (
        a.app().notifier.subscribe("web1", "prod"),
        b.app().notifier.subscribe("web1", "prod"),
    );
    let sub_a_web2 = a.app().notifier.subscribe("web2", "prod");
    let req = one_port(
        "web1",
        json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
    );
    let (st, v) = a.initiate(&alice_a, req.clone()).await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("Initiated")),
        "{v}"
    );
    assert!(sub_a.pending().outbox);
    assert!(!sub_a_web2.pending().any(), "web2 was not touched");
    assert!(!sub_b.pending().any());
    assert!(matches!(agent_a.recv().await, ControllerMsg::Grant(_)));
    assert!(
        agent_b
            .recv_within(Duration::from_millis(500))
            .await
            .is_none(),
        "B's agent was sent nothing"
    );
    // A policy change on B re-sends B's policy only.
    b.put_vm_policy(
        "web1",
        json!([{"number": 2222, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT1H"}]),
    )
    .await;
    assert!(!sub_a.pending().policy);
    assert!(sub_b.pending().policy);
    assert!(matches!(agent_b.recv().await, ControllerMsg::Policy(_)));
    // B's request reaches B's agent, not A's.
    let (_, v) = b.initiate(&alice_b, req).await;
    assert_eq!(
        v["status"], "Denied",
        "port 22 left web1's policy on B: {v}"
    );
    drop(agent_a);
    // A's agent gone: A's presence forgets it (within a bounded wait), B's is untouched.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !live(&a).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "A still lists its agent"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(live(&b), [cb.id.to_string()]);
}

/// Agent failover (docs/ha.md): an agent of level 3 hears every controller's endpoint at
/// enrolment and right after Welcome, is pinged at `agent_ping_seconds`, and a silent one is
/// let go after three pings; an agent of level 2 gets none of it (it could not decode
/// `Settings`) and keeps the 15 s / 45 s keepalive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_3_agents_learn_the_controllers_and_the_short_keepalive() {
    let listed = vec![
        "ctl-a.example.net:8444".to_string(),
        "[2001:db8::2]:8444".to_string(),
    ];
    let h = Harness::with_config(|c| {
        c.agent_ping_seconds = 1;
        c.agent_endpoints = listed.clone();
    })
    .await;
    h.fixture().await;
    let (token, _) = h
        .app()
        .fleet
        .create_enroll_token(&jitgate_controller::authz::Caller::local(), "web1")
        .await
        .expect("token");
    let key = rcgen::KeyPair::generate().expect("key");
    let (st, v) = common::agent::enroll_raw(&h, &token, &common::agent::csr(&key)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["agentEndpoints"], json!(listed), "{v}");
    assert!(
        v["agentEndpoint"]
            .as_str()
            .is_some_and(|e| e.starts_with("127.0.0.1:")),
        "{v}"
    );

    let new = enroll(&h, "web1").await;
    let old = enroll(&h, "web2").await;
    let mut a3 = Agent::connect(&new).await;
    a3.hello_at(&new, 0, 0, 3).await;
    assert!(matches!(a3.recv().await, ControllerMsg::Welcome { .. }));
    match a3.recv().await {
        ControllerMsg::Settings {
            endpoints,
            ping_every_ms,
        } => {
            assert_eq!(endpoints, listed);
            assert_eq!(ping_every_ms, 1_000);
        }
        m => panic!("expected Settings, got {m:?}"),
    }
    let mut a2 = Agent::connect(&old).await;
    a2.handshake_at(&old, 0, 2).await;

    // Pings about every second: at least three in five seconds (answered, so it stays).
    let t0 = tokio::time::Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(
            Duration::from_millis(500),
            jitgate_proto::read_frame::<_, ControllerMsg>(&mut a3.rd),
        )
        .await
        {
            Ok(Ok(Some(ControllerMsg::Ping { nonce }))) => {
                pings += 1;
                a3.send(&AgentMsg::Pong { nonce }).await;
            }
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) | Ok(Err(_)) => panic!("closed while answering pings"),
        }
    }
    assert!(pings >= 3, "{pings} pings in 5 s at agent_ping_seconds = 1");
    // Silent from now on: let go after three pings (well within 10 s); the level-2 agent,
    // just as silent, is still connected then (its limit is 45 s).
    assert!(
        a3.closed_within(Duration::from_secs(10)).await,
        "a silent level-3 agent was kept"
    );
    assert!(
        !a2.closed_within(Duration::from_millis(300)).await,
        "the level-2 agent was closed as if it were level 3"
    );
}

/// Level 10 (docs/protocol.md "Keepalive"): pings are one way. The controller announces its
/// level, keeps pinging, and does not let go of an agent that never answers a ping as long
/// as it hears the agent's status reports (three missed pings closed it before); an agent
/// of level 9, just as silent, is let go after three pings as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_10_agents_are_pinged_one_way() {
    let h = Harness::with_config(|c| c.agent_ping_seconds = 1).await;
    h.fixture().await;
    let quiet = enroll(&h, "web1").await;
    let older = enroll(&h, "web2").await;
    let mut a10 = Agent::connect(&quiet).await;
    a10.hello_at(&quiet, 0, 0, jitgate_proto::LEVEL_QUIET_PINGS)
        .await;
    let mut a9 = Agent::connect(&older).await;
    a9.hello_at(&older, 0, 0, jitgate_proto::LEVEL_CLOSE_REASON)
        .await;
    // Pings come to the level-10 agent and are never answered, for five ping intervals.
    let t0 = tokio::time::Instant::now();
    let (mut pings, mut level) = (0, None);
    while t0.elapsed() < Duration::from_secs(5) {
        match tokio::time::timeout(
            Duration::from_millis(500),
            jitgate_proto::read_frame::<_, ControllerMsg>(&mut a10.rd),
        )
        .await
        {
            Ok(Ok(Some(ControllerMsg::Ping { .. }))) => pings += 1,
            Ok(Ok(Some(ControllerMsg::Level { protocol }))) => level = Some(protocol),
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) | Ok(Err(_)) => {
                panic!("a level-10 agent was closed for not answering pings")
            }
        }
    }
    assert_eq!(level, Some(jitgate_proto::PROTOCOL_LEVEL));
    assert!(pings >= 3, "{pings} pings in 5 s at agent_ping_seconds = 1");
    // The level-9 agent said nothing after its Hello either: it is let go (three pings).
    assert!(
        a9.closed_within(Duration::from_secs(5)).await,
        "a silent level-9 agent was kept"
    );
    // A status report is what the controller hears from a level-10 agent; it keeps it.
    a10.send(&AgentMsg::Status(Box::new(
        jitgate_proto::testing::quiet_status_report(),
    )))
    .await;
    assert!(
        !a10.closed_within(Duration::from_secs(2)).await,
        "a level-10 agent that reports was closed"
    );
}

/// Level 11 (docs/protocol.md "Keepalive"): an agent that announced it is pinged every 3/2 of
/// `agent_ping_seconds` and told so in `Settings` (it then waits two intervals: the same
/// silence limit); an agent of level 10 keeps the configured interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_11_agents_are_pinged_every_half_silence_limit() {
    let h = Harness::with_config(|c| c.agent_ping_seconds = 1).await;
    h.fixture().await;
    let sparse = enroll(&h, "web1").await;
    let older = enroll(&h, "web2").await;
    let settings_ping = |m: ControllerMsg| match m {
        ControllerMsg::Settings { ping_every_ms, .. } => ping_every_ms,
        m => panic!("expected Settings, got {m:?}"),
    };
    let mut a10 = Agent::connect(&older).await;
    a10.hello_at(&older, 0, 0, jitgate_proto::LEVEL_QUIET_PINGS)
        .await;
    assert!(matches!(a10.recv().await, ControllerMsg::Welcome { .. }));
    assert_eq!(settings_ping(a10.recv().await), 1_000);
    let mut a11 = Agent::connect(&sparse).await;
    a11.hello_at(&sparse, 0, 0, jitgate_proto::LEVEL_SPARSE_PINGS)
        .await;
    assert!(matches!(a11.recv().await, ControllerMsg::Welcome { .. }));
    assert_eq!(settings_ping(a11.recv().await), 1_500);
    // The pings follow: at most 4 in 6 s (one every 1.5 s; 6 at the configured second).
    let t0 = tokio::time::Instant::now();
    let mut pings = 0;
    while t0.elapsed() < Duration::from_secs(6) {
        match tokio::time::timeout(
            Duration::from_millis(500),
            jitgate_proto::read_frame::<_, ControllerMsg>(&mut a11.rd),
        )
        .await
        {
            Ok(Ok(Some(ControllerMsg::Ping { .. }))) => pings += 1,
            Ok(Ok(Some(_))) | Err(_) => {}
            Ok(Ok(None)) | Ok(Err(_)) => panic!("a level-11 agent was closed"),
        }
    }
    assert!(
        (2..=4).contains(&pings),
        "{pings} pings in 6 s at 1.5 s intervals"
    );
}
