//! The notifications that do not come from a request decision: `policy.changed` (with its
//! weakening flag), `access.ending_soon` (once per window), `agent.offline` and
//! `agent.back_online` (once per change), `access.break_glass`; each through a real
//! controller (SQLite here; PostgreSQL with JIT_TEST_BACKEND=postgres) to a real recording
//! HTTPS receiver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../notify/tests/common/mod.rs"]
mod receivers;

use std::time::{Duration, Instant};

use common::agent::{Agent, enroll};
use common::notify::Rig;
use common::one_port;
use jitgate_api::Role;
use jitgate_proto::AgentMsg;
use jitgate_proto::message::{ReportedGrant, ReportedLimitedGrant};
use receivers::{Pki, Receiver};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &[u8] = b"events-test-secret";

async fn rig(rx: &Receiver, pki: &Pki, events: &[&str]) -> Rig {
    let tail = format!(
        "agent_offline_after_seconds = 5\n[[notify.sinks]]\nname = \"hook\"\nformat = \"webhook\"\n\
         target = \"{}\"\nsecret = \"hook-key\"\nevents = {:?}\n",
        rx.url("https", "127.0.0.1"),
        events
    );
    Rig::start(&pki.ca_pem, &[("hook-key", SECRET)], &tail).await
}

/// Distinct events received so far (duplicates share the delivery id), in arrival order.
fn events(rx: &Receiver) -> Vec<Value> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for r in rx.received() {
        let sig = r.header("jitgate-signature").expect("signed");
        jitgate_notify::verify_signature(
            sig,
            &r.body,
            SECRET,
            jitgate_api::time::now_ms() / 1000,
            Duration::from_secs(600),
        )
        .expect("valid signature");
        if seen.insert(r.header("jitgate-delivery").unwrap().to_string()) {
            out.push(r.json());
        }
    }
    out
}

async fn wait_events(rx: &Receiver, n: usize) -> Vec<Value> {
    let t0 = Instant::now();
    loop {
        let got = events(rx);
        if got.len() >= n {
            return got;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "{} of {n} events: {got:#?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn ssh(prefix: &str) -> Value {
    json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": prefix,
        "maxRequestAccessDuration": "PT3H"}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_are_told_with_their_weakening_flag() {
    let pki = Pki::new("notify events test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let t = rig(&rx, &pki, &["policy.changed"]).await;
    let path = "/api/v1/resourceGroups/prod/jitNetworkAccessPolicies/default";
    let put = |ports: Value| {
        let h = &t.h;
        async move {
            let (st, v) = h
                .call(
                    Method::PUT,
                    path,
                    Some(&h.admin),
                    Some(json!({"ports": ports})),
                )
                .await;
            assert_eq!(st, StatusCode::OK, "{v}");
        }
    };
    put(ssh("203.0.113.0/24")).await;
    put(ssh("203.0.113.0/25")).await;
    put(ssh("*")).await;
    // The same policy again changes nothing: nothing told.
    put(ssh("*")).await;
    let (st, v) = t.h.call(Method::DELETE, path, Some(&t.h.admin), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    let got = wait_events(&rx, 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got2 = events(&rx);
    assert_eq!(got2.len(), 4, "{got2:#?}");
    let flags: Vec<(bool, &str)> = got
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "policy.changed");
            assert_eq!(e["scope"]["resourceGroup"], "prod");
            assert_eq!(e["changedBy"]["id"], "token:admin");
            (
                e["weakensProtection"].as_bool().unwrap(),
                e["operation"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        flags,
        [
            (false, "Update"),
            (false, "Update"),
            (true, "Update"),
            (true, "Delete")
        ],
        "{got:#?}"
    );
    assert_eq!(got[0]["changes"], json!(["port 22/TCP added"]));
    let widened = got[2]["changes"][0].as_str().unwrap();
    assert!(widened.contains("sources widened"), "{widened}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_soon_is_told_once_per_window() {
    let pki = Pki::new("notify events test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let t = rig(&rx, &pki, &["access.ending_soon"]).await;
    t.h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let req = t.h.token("req", Role::Requester, "rg:prod").await;
    let window =
        |d: &str| json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.7", "duration": d});
    // Ten minutes: within a lead of 10 min at once. Two hours: not yet.
    let (st, short) = t.h.initiate(&req, one_port("web1", window("PT10M"))).await;
    assert_eq!(st, StatusCode::OK, "{short}");
    let (st, long) = t.h.initiate(&req, one_port("web2", window("PT2H"))).await;
    assert_eq!(st, StatusCode::OK, "{long}");
    // The sweep (driven here; the harness's own runs rarely) tells the short one, once.
    let app = t.h.app();
    let now = jitgate_api::time::now_ms();
    assert_eq!(
        app.lifecycle.tell_ending_soon(now, 600_000).await.unwrap(),
        1
    );
    assert_eq!(
        app.lifecycle.tell_ending_soon(now, 600_000).await.unwrap(),
        0
    );
    let got = wait_events(&rx, 1).await;
    assert_eq!(got[0]["type"], "access.ending_soon");
    assert_eq!(got[0]["request"]["id"], short["id"]);
    assert_eq!(got[0]["virtualMachine"]["id"], "web1");
    assert_eq!(got[0]["port"]["number"], 22);
    // The long window is told when it comes within the lead.
    let in_2h = now + 2 * 3_600_000 - 300_000;
    assert_eq!(
        app.lifecycle
            .tell_ending_soon(in_2h, 600_000)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        app.lifecycle
            .tell_ending_soon(in_2h, 600_000)
            .await
            .unwrap(),
        0
    );
    let got = wait_events(&rx, 2).await;
    assert_eq!(got[1]["request"]["id"], long["id"]);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events(&rx).len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_offline_and_back_online_are_told_once() {
    let pki = Pki::new("notify events test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let t = rig(&rx, &pki, &["agent.offline", "agent.back_online"]).await;
    let c = enroll(&t.h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    let app = t.h.app();
    let watch =
        |now: i64| jitgate_controller::fleet::watch::check(&app.db, &app.presence, now, 60_000, 0);
    let now = jitgate_api::time::now_ms();
    // Connected: nothing to tell, however late.
    assert_eq!(watch(now + 3_600_000).await.unwrap(), 0);
    drop(a);
    // Gone: not yet past the grace, then told once.
    let t0 = Instant::now();
    while app.presence.is_live(&c.id.to_string()) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the channel never closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(watch(now + 1_000).await.unwrap(), 0);
    assert_eq!(watch(now + 120_000).await.unwrap(), 1);
    assert_eq!(watch(now + 180_000).await.unwrap(), 0);
    // Back: told once.
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    assert_eq!(watch(jitgate_api::time::now_ms()).await.unwrap(), 1);
    assert_eq!(watch(jitgate_api::time::now_ms()).await.unwrap(), 0);
    let got = wait_events(&rx, 2).await;
    let types: Vec<&str> = got.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["agent.offline", "agent.back_online"], "{got:#?}");
    assert_eq!(got[0]["agent"]["virtualMachine"], "web1");
    assert_eq!(got[0]["agent"]["resourceGroup"], "prod");
    drop(a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_break_glass_grant_is_told_once() {
    let pki = Pki::new("notify events test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let t = rig(&rx, &pki, &["access.break_glass"]).await;
    let c = enroll(&t.h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    let local = ReportedGrant {
        grant_id: uuid::Uuid::new_v4(),
        origin: "local".into(),
        protocol: jitgate_common::Protocol::Tcp,
        port: jitgate_common::Port::new(22).unwrap(),
        source: "198.51.100.7/32".parse().unwrap(),
        end_unix_ms: jitgate_api::time::now_ms() + 60_000,
        requester: "root <script>".into(),
    };
    for _ in 0..2 {
        a.send(&AgentMsg::Grants {
            grants: vec![local.clone()],
        })
        .await;
    }
    let got = wait_events(&rx, 1).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(events(&rx).len(), 1, "reported twice, told once");
    let e = &got[0];
    assert_eq!(e["type"], "access.break_glass");
    assert_eq!(e["virtualMachine"]["id"], "web1");
    assert_eq!(e["localUser"], "root <script>");
    assert_eq!(e["ports"][0]["number"], 22);
    assert_eq!(
        e["ports"][0]["allowedSourceAddressPrefixes"],
        json!(["198.51.100.7/32"])
    );
    assert!(
        e["ports"][0].get("maxConnections").is_none(),
        "a plain Grants report says no limit: {e}"
    );
    // A level-12 report carries each grant's connection limit: the event and the activity
    // entry say it.
    let limited = ReportedGrant {
        grant_id: uuid::Uuid::new_v4(),
        ..local.clone()
    };
    a.send(&AgentMsg::GrantsWithLimits {
        grants: vec![
            ReportedLimitedGrant {
                grant: local.clone(),
                max_connections: None,
            },
            ReportedLimitedGrant {
                grant: limited.clone(),
                max_connections: jitgate_common::MaxConnections::new(2),
            },
        ],
    })
    .await;
    let got = wait_events(&rx, 2).await;
    assert_eq!(got[1]["type"], "access.break_glass");
    assert_eq!(got[1]["ports"][0]["maxConnections"], 2, "{}", got[1]);
    let details: Vec<String> =
        sqlx::query_scalar("SELECT details FROM activity WHERE operation = $1 ORDER BY seq")
            .bind(jitgate_api::Operation::LocalAccess.as_str())
            .fetch_all(t.h.app().db.pool())
            .await
            .unwrap();
    let details: Vec<Value> = details
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(details.len(), 2, "{details:?}");
    assert!(details[0].get("maxConnections").is_none(), "{details:?}");
    assert_eq!(details[1]["grantId"], limited.grant_id.to_string());
    assert_eq!(details[1]["maxConnections"], 2);
    drop(a);
}

/// Email sinks reach the people an event concerns when their token carries an address:
/// the approvers a request waits for, then its requester; never a principal without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn email_reaches_the_approvers_then_the_requester() {
    let pki = Pki::new("notify events test CA");
    let mut smtp =
        receivers::SmtpServer::start(&pki, jitgate_notify::SmtpSecurity::StartTls, "250 OK").await;
    let tail = format!(
        "[notify.smtp]\nhost = \"localhost\"\nport = {}\nsecurity = \"starttls\"\n\
         username = \"jitgate\"\npassword_secret = \"smtp-password\"\n\
         from = \"jitgate <jit@example.com>\"\n\
         [[notify.sinks]]\nname = \"mail\"\nformat = \"email\"\ntarget = \"ops@example.com\"\n\
         events = [\"request.pending_approval\", \"request.approved\"]\n",
        smtp.port
    );
    let t = Rig::start(&pki.ca_pem, &[("smtp-password", b"s3cret pass")], &tail).await;
    t.h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
            "maxRequestAccessDuration": "PT3H",
            "approval": {"stages": [{"approvers": ["token:carl", "token:dave"], "required": 1}]}}]),
    )
    .await;
    let app = t.h.app();
    let local = jitgate_controller::authz::Caller::local();
    let mut ids = std::collections::HashMap::new();
    for (name, role, email) in [
        ("req", Role::Requester, Some("alice@example.com")),
        ("carl", Role::Reader, Some("carl@example.com")),
        ("dave", Role::Reader, None),
    ] {
        let scope = "*".parse().unwrap();
        let (info, secret) = app
            .tokens
            .create(&local, name, role, &scope, None, &[])
            .await
            .unwrap();
        app.tokens.set_email(&local, &info.id, email).await.unwrap();
        ids.insert(name, secret);
    }
    assert!(
        app.tokens
            .set_email(&local, "tok_nosuch", Some("x@example.com"))
            .await
            .is_err()
    );
    let (st, r) =
        t.h.initiate(
            &ids["req"],
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.7", "duration": "PT10M"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let rcpt = |m: &Value| -> Vec<String> {
        let mut v: Vec<String> = m["rcpt_tos"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    };
    let m = smtp.next().await;
    assert_eq!(rcpt(&m), ["carl@example.com", "ops@example.com"], "{m}");
    let id = r["id"].as_str().unwrap();
    let (st, v) =
        t.h.call(
            Method::POST,
            &format!("/api/v1/requests/{id}/approve"),
            Some(&ids["carl"]),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let m = smtp.next().await;
    assert_eq!(rcpt(&m), ["alice@example.com", "ops@example.com"], "{m}");
}

/// A newer request for the same port and source closes the older one's window: told as
/// `access.ended` with `NewerRequestInitiated`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_closed_by_a_newer_request_is_told() {
    let pki = Pki::new("notify events test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let t = rig(&rx, &pki, &["access.ended"]).await;
    t.h.put_rg_policy("prod", ssh("203.0.113.0/24")).await;
    let req = t.h.token("req", Role::Requester, "rg:prod").await;
    let body = one_port(
        "web1",
        json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.7", "duration": "PT10M"}),
    );
    let (st, first) = t.h.initiate(&req, body.clone()).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    let (st, second) = t.h.initiate(&req, body).await;
    assert_eq!(st, StatusCode::OK, "{second}");
    let got = wait_events(&rx, 1).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(events(&rx).len(), 1, "{got:#?}");
    let e = &got[0];
    assert_eq!(e["type"], "access.ended");
    assert_eq!(e["request"]["id"], first["id"]);
    assert_eq!(e["statusReason"], "NewerRequestInitiated");
    assert_eq!(e["virtualMachine"]["id"], "web1");
    assert_eq!(e["port"]["number"], 22);
}
