//! Notifications end to end: a real controller (SQLite here; PostgreSQL with
//! JIT_TEST_BACKEND=postgres) with a webhook sink from `[notify]` in controller.toml, and a
//! real recording HTTPS receiver on loopback (the one jitgate-notify's tests use). Events
//! arrive in order with valid signatures; a receiver that fails (5xx, then refused) and a
//! controller restarted meanwhile lose nothing; a hanging sink does not slow initiate.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../notify/tests/common/mod.rs"]
mod receivers;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::{Duration, Instant};

use common::agent::{Agent, enroll};
use common::{Harness, one_port};
use jitgate_api::Role;
use jitgate_controller::state::Config;
use jitgate_notify::{DeliveryState, SecretName, SecretStore};
use jitgate_proto::message::Outcome;
use jitgate_proto::{AgentMsg, ControllerMsg};
use receivers::{Answer, Pki, Received, Receiver};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const SECRET: &[u8] = b"a-webhook-signing-secret-for-tests";

/// Port 22 of prod needs carl's approval; 80 is open without one.
fn policy() -> Value {
    json!([
        {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT3H",
         "approval": {"stages": [{"approvers": ["token:carl"], "required": 1}],
           "allowEmergency": true}},
        {"number": 80, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
         "maxRequestAccessDuration": "PT3H"}
    ])
}

struct T {
    h: Harness,
    /// The sink's secret and CA file.
    _tmp: tempfile::TempDir,
    pki: Pki,
    req: String,
    carl: String,
}

/// `[notify]` as an operator writes it in controller.toml: one webhook sink at `url`.
fn notify_toml(dir: &Path, url: &str, timeout: u64) -> String {
    format!(
        r#"
[notify]
secrets_dir = "{secrets}"
allow_networks = ["127.0.0.1/32"]
ca_files = ["{ca}"]
system_roots = false
timeout_seconds = {timeout}
retry_initial_seconds = 1
retry_max_interval_seconds = 2

[[notify.sinks]]
name = "hook"
format = "webhook"
target = "{url}"
secret = "hook-key"
events = ["request.pending_approval", "request.approved", "request.denied", "request.cancelled",
  "request.approval_timed_out", "access.applied", "access.ended"]
"#,
        secrets = dir.join("secrets").display(),
        ca = dir.join("ca.pem").display(),
    )
}

async fn setup(pki: Pki, url: &str, timeout: u64) -> T {
    setup_on(pki, url, timeout, None, "").await
}

/// As [`setup`], on the database `database` if given, with more of controller.toml after
/// the `[notify]` table (`extra`).
async fn setup_on(pki: Pki, url: &str, timeout: u64, database: Option<String>, extra: &str) -> T {
    setup_toml(pki, database, |dir| notify_toml(dir, url, timeout) + extra).await
}

/// As [`setup`], with `[notify]` as `toml` writes it (given the directory of the secrets
/// and the CA file).
async fn setup_toml(pki: Pki, database: Option<String>, toml: impl FnOnce(&Path) -> String) -> T {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let store = SecretStore::open(tmp.path().join("secrets")).unwrap();
    store
        .put(&"hook-key".parse::<SecretName>().unwrap(), SECRET)
        .unwrap();
    let text = toml(tmp.path());
    let parsed: Config = toml::from_str(&text).unwrap();
    let h = Harness::with_config(|c| {
        c.notify = parsed.notify;
        c.database_url = database;
    })
    .await;
    h.fixture().await;
    h.put_rg_policy("prod", policy()).await;
    let req = h.token("req", Role::Requester, "rg:prod").await;
    let carl = h.token("carl", Role::Reader, "*").await;
    T {
        h,
        _tmp: tmp,
        pki,
        req,
        carl,
    }
}

/// Port `n` from a source no earlier request of the test used: a request never supersedes
/// another here (that would add `access.ended` events the tests do not count).
fn port(n: u32) -> Value {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let host = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 250 + 1;
    json!({"number": n, "allowedSourceAddressPrefix": format!("203.0.113.{host}"), "duration": "PT10M"})
}

async fn initiate(t: &T, n: u32) -> Value {
    let (st, r) = t.h.initiate(&t.req, one_port("web1", port(n))).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    r
}

async fn approve(t: &T, id: &str) {
    let (st, v) =
        t.h.call(
            Method::POST,
            &format!("/api/v1/requests/{id}/approve"),
            Some(&t.carl),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
}

/// Waits until `f` holds for what the receiver got (at most `limit`).
async fn wait_for(
    rx: &Receiver,
    limit: Duration,
    f: impl Fn(&[Received]) -> bool,
) -> Vec<Received> {
    let t0 = Instant::now();
    loop {
        let got = rx.received();
        if f(&got) {
            return got;
        }
        assert!(
            t0.elapsed() < limit,
            "the receiver got {} deliveries in {limit:?}: {:?}",
            got.len(),
            got.iter()
                .map(|r| r.json()["type"].clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Each delivery's signature verifies with the sink's secret and its `Jitgate-Delivery` is
/// the event's id.
fn check_signed(r: &Received) {
    let sig = r.header("jitgate-signature").expect("signature header");
    let now = jitgate_api::time::now_ms() / 1000;
    jitgate_notify::verify_signature(sig, &r.body, SECRET, now, Duration::from_secs(600))
        .expect("valid signature");
    assert_eq!(
        r.header("jitgate-delivery"),
        r.json()["id"].as_str(),
        "Jitgate-Delivery is the event id"
    );
}

/// Distinct events in first-arrival order; every duplicate has the id and body of the
/// first.
fn distinct(got: &[Received]) -> Vec<Value> {
    let mut seen: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut out = Vec::new();
    for r in got {
        let id = r.header("jitgate-delivery").unwrap().to_string();
        match seen.get(&id) {
            Some(body) => assert_eq!(body, &r.body, "a duplicate of {id} differs"),
            None => {
                seen.insert(id, r.body.clone());
                out.push(r.json());
            }
        }
    }
    out
}

/// Waits until the delivery states satisfy `f` (at most `limit`).
async fn wait_states(
    t: &T,
    limit: Duration,
    f: impl Fn(&HashMap<DeliveryState, i64>) -> bool,
) -> HashMap<DeliveryState, i64> {
    let t0 = Instant::now();
    loop {
        let s = states(t).await;
        if f(&s) {
            return s;
        }
        assert!(
            t0.elapsed() < limit,
            "delivery states {s:?} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How many deliveries are in each state, all sinks together.
async fn states(t: &T) -> HashMap<DeliveryState, i64> {
    let mut conn = t.h.app().db.pool().acquire().await.unwrap();
    let mut out = HashMap::new();
    for (_, s, n) in jitgate_controller::store::notify::counts(&mut conn)
        .await
        .unwrap()
    {
        *out.entry(s).or_insert(0) += n;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approval_flow_reaches_the_webhook_in_order_signed() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let t = setup(pki, &rx.url("https", "127.0.0.1"), 5).await;
    let r = initiate(&t, 22).await;
    assert_eq!(r["status"], "PendingApproval", "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    approve(&t, &id).await;
    let (st, v) = t.h.revoke(&t.req, &id).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    // A policy denial at initiate (port 23 is in no policy) and an emergency approval.
    let denied = initiate(&t, 23).await;
    assert_eq!(denied["status"], "Denied", "{denied}");
    let e = initiate(&t, 22).await["id"].as_str().unwrap().to_string();
    let (st, v) =
        t.h.call(
            Method::POST,
            &format!("/api/v1/requests/{e}/approve"),
            Some(&t.h.admin),
            Some(json!({"emergency": true, "reason": "prod is down"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");

    let got = wait_for(&rx, Duration::from_secs(30), |g| distinct(g).len() >= 6).await;
    got.iter().for_each(check_signed);
    let events = distinct(&got);
    let of = |rid: &str| -> Vec<String> {
        events
            .iter()
            .filter(|e| e["request"]["id"] == rid)
            .map(|e| e["type"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        of(&id),
        [
            "request.pending_approval",
            "request.approved",
            "access.ended"
        ],
        "{events:#?}"
    );
    // Order is kept per request, not across requests (deliveries run in parallel).
    let first = events
        .iter()
        .find(|e| e["request"]["id"] == id.as_str())
        .unwrap();
    assert_eq!(first["type"], "request.pending_approval");
    assert_eq!(first["approvers"][0]["id"], "token:carl");
    assert_eq!(first["request"]["requestor"]["id"], "token:req");
    assert_eq!(first["links"]["cli"], format!("jit approve {id}"));
    let ended = events.iter().find(|e| e["type"] == "access.ended").unwrap();
    assert_eq!(ended["statusReason"], "UserRequested");
    assert_eq!(ended["port"]["number"], 22);
    let d = denied["id"].as_str().unwrap();
    assert_eq!(of(d), ["request.denied"]);
    let den = events.iter().find(|e| e["request"]["id"] == d).unwrap();
    assert!(den.get("deniedBy").is_none(), "a policy denial: {den}");
    assert!(!den["reasons"].as_array().unwrap().is_empty(), "{den}");
    assert_eq!(of(&e), ["request.pending_approval", "request.approved"]);
    let em = events
        .iter()
        .find(|x| x["request"]["id"] == e && x["type"] == "request.approved")
        .unwrap();
    assert_eq!(em["emergency"], true, "{em}");
    assert_eq!(em["reasons"], json!(["prod is down"]));
    // Every delivery is recorded delivered.
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Delivered) == Some(&6)
    })
    .await;
    // And counted on the metrics listener's scrape.
    let sample = jitgate_controller::health::sample(t.h.app()).await.unwrap();
    let server = t.h.server.as_ref().unwrap();
    let text = server.metrics.render(Some(&sample)).await.unwrap();
    assert!(
        text.contains("jitgate_notify_deliveries{sink=\"hook\",state=\"delivered\"} 6"),
        "{text}"
    );
    // The delivered count is kept, not counted: it equals the rows, and a prune of every
    // delivered row takes it down with them.
    let pool = t.h.app().db.pool();
    let rows: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM notify_deliveries WHERE state = 'delivered'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(rows, 6);
    // The last success is kept beside the count: the latest delivery's time, before the
    // prune and after it.
    let latest: i64 = sqlx::query_scalar(
        "SELECT MAX(delivered_at) FROM notify_deliveries WHERE state = 'delivered'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let last = || async {
        jitgate_controller::store::notify::last_delivered(&mut pool.acquire().await.unwrap())
            .await
            .unwrap()
    };
    assert_eq!(last().await, vec![("hook".to_string(), Some(latest))]);
    let (d, _) = jitgate_controller::store::notify::prune_all(
        &t.h.app().db,
        jitgate_api::time::now_ms() + 60_000,
    )
    .await
    .unwrap();
    assert_eq!(d, 6);
    assert_eq!(states(&t).await.get(&DeliveryState::Delivered), None);
    assert_eq!(last().await, vec![("hook".to_string(), Some(latest))]);
}

/// A delivery is claimed as it is fanned out when its sink has room: its first attempt
/// failing, it is retried like any other, and the next event of the same request waits
/// for it (queued, never attempted) until it is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_claimed_at_fan_out_is_retried_and_keeps_its_request_in_order() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    rx.answer(Answer::Status(503));
    let t = setup(pki, &rx.url("https", "127.0.0.1"), 5).await;
    let id = initiate(&t, 22).await["id"].as_str().unwrap().to_string();
    // The first attempt fails (503): retrying.
    wait_for(&rx, Duration::from_secs(30), |g| !g.is_empty()).await;
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Retrying) == Some(&1)
    })
    .await;
    // The next event of the request is written while the first is still pending.
    approve(&t, &id).await;
    let pool = t.h.app().db.pool();
    let row = |event_type: &'static str| async move {
        sqlx::query_as::<_, (String, i64, Option<String>)>(
            "SELECT d.state, d.attempts, d.lease_owner FROM notify_deliveries d \
             JOIN notify_events e ON e.seq = d.event_seq WHERE e.event_type = $1",
        )
        .bind(event_type)
        .fetch_optional(pool)
        .await
        .unwrap()
    };
    // Fanned out, and waiting: queued, never claimed, while the first is retried.
    let t0 = Instant::now();
    while row("request.approved").await.is_none() {
        assert!(t0.elapsed() < Duration::from_secs(30), "never fanned out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = rx.received().len();
    wait_for(&rx, Duration::from_secs(30), |g| g.len() >= before + 2).await;
    assert_eq!(
        row("request.approved").await,
        Some(("queued".to_string(), 0, None)),
        "the later event of the request waits, unclaimed"
    );
    let (state, attempts, _) = row("request.pending_approval").await.unwrap();
    assert_eq!(state, "retrying");
    assert!(attempts >= 2, "retried: {attempts} attempts");
    assert!(
        rx.received()
            .iter()
            .all(|r| r.json()["type"] == "request.pending_approval"),
        "only the first event was attempted while it failed"
    );
    // The receiver recovers: the first event, then the second.
    rx.answer(Answer::Status(200));
    let got = wait_for(&rx, Duration::from_secs(30), |g| distinct(g).len() >= 2).await;
    got.iter().for_each(check_signed);
    let types: Vec<Value> = distinct(&got).iter().map(|e| e["type"].clone()).collect();
    assert_eq!(types, ["request.pending_approval", "request.approved"]);
    let approved_at = got
        .iter()
        .position(|r| r.json()["type"] == "request.approved")
        .unwrap();
    assert!(
        got[..approved_at]
            .iter()
            .any(|r| r.json()["type"] == "request.pending_approval"),
        "the second event arrived after the first"
    );
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Delivered) == Some(&2)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_and_a_restart_lose_nothing() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let addr = rx.addr;
    rx.answer(Answer::Status(503));
    let mut t = setup(pki, &rx.url("https", "127.0.0.1"), 5).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = initiate(&t, 22).await;
        let id = r["id"].as_str().unwrap().to_string();
        approve(&t, &id).await;
        ids.push(id);
    }
    // 5xx: attempted, failing, retrying.
    wait_for(&rx, Duration::from_secs(30), |g| !g.is_empty()).await;
    let s = wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Retrying).is_some()
    })
    .await;
    assert_eq!(s.get(&DeliveryState::Delivered), None, "{s:?}");
    // The lag shows on the scrape while deliveries wait.
    let sample = jitgate_controller::health::sample(t.h.app()).await.unwrap();
    let text =
        t.h.server
            .as_ref()
            .unwrap()
            .metrics
            .render(Some(&sample))
            .await
            .unwrap();
    assert!(
        text.contains("jitgate_notify_oldest_pending_age_seconds{sink=\"hook\"}"),
        "{text}"
    );
    // The oldest pending event, read from the index alone, is the first one still waiting.
    let pool = t.h.app().db.pool();
    let first: i64 = sqlx::query_scalar(
        "SELECT MIN(e.created_at) FROM notify_deliveries d JOIN notify_events e \
         ON e.seq = d.event_seq WHERE d.state IN ('queued', 'retrying')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let oldest =
        jitgate_controller::store::notify::oldest_pending(&mut pool.acquire().await.unwrap())
            .await
            .unwrap();
    assert_eq!(oldest, vec![("hook".to_string(), first)]);
    // Then refused (nothing listens), with the controller restarted meanwhile.
    let failed_5xx = rx.received().len();
    drop(rx);
    t.h.restart().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Back: everything arrives, in order per request.
    let rx = Receiver::https_on(&t.pki, "127.0.0.1", addr.port()).await;
    let got = wait_for(&rx, Duration::from_secs(60), |g| distinct(g).len() >= 6).await;
    got.iter().for_each(check_signed);
    let events = distinct(&got);
    assert_eq!(events.len(), 6, "{events:#?}");
    for id in &ids {
        let types: Vec<&str> = events
            .iter()
            .filter(|e| e["request"]["id"] == id.as_str())
            .map(|e| e["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["request.pending_approval", "request.approved"]);
    }
    assert!(failed_5xx >= 1);
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Delivered) == Some(&6)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_sink_does_not_slow_initiate() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    rx.answer(Answer::Hang);
    // Each attempt waits its whole timeout (3 s) for an answer that never comes.
    let t = setup(pki, &rx.url("https", "127.0.0.1"), 3).await;
    let n = 20;
    let t0 = Instant::now();
    for i in 0..n {
        // Denied by policy (port 2000+ is in no policy): each writes an event.
        let r = initiate(&t, 2000 + i).await;
        assert_eq!(r["status"], "Denied", "{r}");
    }
    let took = t0.elapsed();
    // Waiting on the sink would take n x 3 s = 60 s; the requests take a small fraction.
    assert!(
        took < Duration::from_secs(15),
        "{n} initiates took {took:?} with a hanging sink"
    );
    // The sink was being tried meanwhile (its attempts hang), and every event is queued.
    wait_for(&rx, Duration::from_secs(30), |g| !g.is_empty()).await;
    let s = wait_states(&t, Duration::from_secs(30), |s| {
        s.values().sum::<i64>() == i64::from(n)
    })
    .await;
    assert_eq!(s.get(&DeliveryState::Delivered), None, "{s:?}");
}

/// Two controllers on one PostgreSQL, both delivering: each event reaches the receiver
/// exactly once (the lease: one controller at a time per delivery). Always on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_controllers_deliver_each_event_once() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let db = common::fresh_postgres_database().await;
    let t = setup_on(pki, &rx.url("https", "127.0.0.1"), 5, Some(db), "").await;
    let b = t.h.second().await;
    let n = 8;
    for i in 0..n {
        let r = initiate(&t, 22).await;
        let id = r["id"].as_str().unwrap().to_string();
        // Decided through either controller: both write events, both workers deliver.
        let via = if i % 2 == 0 { &t.h } else { &b };
        let (st, v) = via
            .call(
                Method::POST,
                &format!("/api/v1/requests/{id}/approve"),
                Some(&t.carl),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    let want = 2 * n;
    wait_for(&rx, Duration::from_secs(30), |g| distinct(g).len() >= want).await;
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Delivered) == Some(&(want as i64))
    })
    .await;
    let got = rx.received();
    got.iter().for_each(check_signed);
    assert_eq!(got.len(), want, "every event exactly once");
}

/// A request approved by policy alone tells nothing until its agent applies it
/// (`access.applied`), then its end (`access.ended`, Expired).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applied_and_expired_access_is_told() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let t = setup(pki, &rx.url("https", "127.0.0.1"), 5).await;
    let c = enroll(&t.h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    let r = initiate(&t, 80).await;
    assert_eq!(r["status"], "Initiated", "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let g = match a.recv_within(Duration::from_secs(5)).await {
        Some(ControllerMsg::Grant(s)) => s.verify(&c.signing, c.id).expect("grant verifies"),
        m => panic!("expected a grant, got {m:?}"),
    };
    a.send(&AgentMsg::GrantResult {
        grant_id: g.grant_id,
        seq: g.seq,
        outcome: Outcome::Applied { agent_unix_ms: 1 },
    })
    .await;
    let got = wait_for(&rx, Duration::from_secs(30), |g| !g.is_empty()).await;
    let events = distinct(&got);
    assert_eq!(events[0]["type"], "access.applied", "{events:#?}");
    assert_eq!(events[0]["request"]["status"], "Applied");
    // The window ends (the sweep, driven here at a time past it).
    let later = jitgate_api::time::now_ms() + 3_600_000;
    t.h.app().lifecycle.expire_due(later).await.unwrap();
    let got = wait_for(&rx, Duration::from_secs(30), |g| distinct(g).len() >= 2).await;
    got.iter().for_each(check_signed);
    let events = distinct(&got);
    let types: Vec<&str> = events
        .iter()
        .filter(|e| e["request"]["id"] == id.as_str())
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["access.applied", "access.ended"]);
    assert_eq!(events[1]["statusReason"], "Expired");
    assert_eq!(events[1]["virtualMachine"]["id"], "web1");
}

/// A sink scoped to `rg:dev` and to `request.denied` gets only those events; the unscoped
/// sink gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scoped_sink_gets_only_its_scope_and_types() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    let dev = Receiver::https(&pki, "127.0.0.1").await;
    let extra = format!(
        r#"
[[notify.sinks]]
name = "dev-denials"
format = "webhook"
target = "{}"
secret = "hook-key"
scope = "rg:dev"
events = ["request.denied"]
"#,
        dev.url("https", "127.0.0.1")
    );
    let t = setup_on(pki, &rx.url("https", "127.0.0.1"), 5, None, &extra).await;
    let dev_req = t.h.token("devreq", Role::Requester, "rg:dev").await;
    // prod: pending (both types outside the dev sink), then denied (outside its scope).
    let pending = initiate(&t, 22).await["id"].as_str().unwrap().to_string();
    let prod_denied = initiate(&t, 23).await["id"].as_str().unwrap().to_string();
    // dev: denied (db1 has no policy).
    let (st, r) = t
        .h
        .initiate(
            &dev_req,
            one_port(
                "db1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.7", "duration": "PT10M"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(r["status"], "Denied", "{r}");
    let dev_denied = r["id"].as_str().unwrap().to_string();
    let all = wait_for(&rx, Duration::from_secs(30), |g| distinct(g).len() >= 3).await;
    // In order per request; across requests in any order.
    let mut ids: Vec<String> = distinct(&all)
        .iter()
        .map(|e| e["request"]["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut want = vec![pending, prod_denied, dev_denied.clone()];
    want.sort();
    assert_eq!(ids, want);
    let got = wait_for(&dev, Duration::from_secs(30), |g| !g.is_empty()).await;
    got.iter().for_each(check_signed);
    // Everything the unscoped sink got has been fanned out: the dev sink has its one.
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Delivered) == Some(&4)
    })
    .await;
    let events = distinct(&dev.received());
    assert_eq!(events.len(), 1, "{events:#?}");
    assert_eq!(events[0]["type"], "request.denied");
    assert_eq!(events[0]["request"]["id"], dev_denied.as_str());
}

/// A receiver that refuses for good (404: permanent) makes deliveries dead at once;
/// `jit-controller notify status` shows them with the failure, `notify retry` re-drives
/// them and they arrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_deliveries_are_shown_and_retried() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    rx.answer(Answer::Status(404));
    let t = setup(pki, &rx.url("https", "127.0.0.1"), 5).await;
    let id = initiate(&t, 22).await["id"].as_str().unwrap().to_string();
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Dead) == Some(&1)
    })
    .await;
    // block_in_place: the controller under test runs on this runtime; its tasks move to the
    // other worker while the command waits for the database.
    let cli = |args: &[&str]| -> Value {
        let out = tokio::task::block_in_place(|| {
            std::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
                .arg("--state-dir")
                .arg(&t.h.dir.0)
                .arg("--json")
                .args(args)
                .output()
        })
        .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let v = cli(&["notify", "status"]);
    assert_eq!(v[0]["name"], "hook", "{v}");
    assert_eq!(v[0]["dead"], 1, "{v}");
    assert_eq!(v[0]["lastFailure"]["kind"], "http-4xx", "{v}");
    assert_eq!(v[0]["lastFailure"]["statusClass"], "4xx", "{v}");
    // An unknown sink is refused and changes nothing.
    let out = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
            .arg("--state-dir")
            .arg(&t.h.dir.0)
            .args(["notify", "retry", "--sink", "nope"])
            .output()
    })
    .unwrap();
    assert!(!out.status.success());
    assert_eq!(states(&t).await.get(&DeliveryState::Dead), Some(&1));
    // The receiver is fixed; the dead delivery is re-driven and arrives.
    rx.answer(Answer::Status(204));
    assert_eq!(cli(&["notify", "retry", "--sink", "hook"])["retried"], 1);
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Delivered) == Some(&1)
    })
    .await;
    let got = rx.received();
    got.iter().for_each(check_signed);
    let ids: Vec<String> = got
        .iter()
        .map(|r| r.header("jitgate-delivery").unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 2, "one refused attempt, one delivered");
    assert_eq!(ids[0], ids[1], "the same delivery id both times");
    assert_eq!(got[1].json()["request"]["id"], id.as_str());
    // Given up on: an admin deletes a dead delivery through the API (a requester may not).
    rx.answer(Answer::Status(404));
    initiate(&t, 22).await;
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Dead) == Some(&1)
    })
    .await;
    let (st, _) =
        t.h.call(Method::POST, "/api/v1/notify/discard", Some(&t.req), None)
            .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, v) =
        t.h.call(
            Method::POST,
            "/api/v1/notify/discard",
            Some(&t.h.admin),
            Some(json!({"sink": "hook"})),
        )
        .await;
    assert_eq!(
        (st, v["deliveries"].clone()),
        (StatusCode::OK, json!(1)),
        "{v}"
    );
    assert_eq!(states(&t).await.get(&DeliveryState::Dead), None);
}

/// A host that trusts no certificate authority (a minimal system without CA certificates)
/// and has no sink still runs: a trust store is needed only once a sink is configured, and
/// then its absence stops the start with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_trust_store_is_needed_until_a_sink_is_configured() {
    let parsed: Config = toml::from_str("[notify]\nsystem_roots = false\n").unwrap();
    let h = Harness::with_config(|c| c.notify = parsed.notify).await;
    let (st, _) = h.get("/api/v1/me", &h.admin).await;
    assert_eq!(st, reqwest::StatusCode::OK);
    drop(h);
    let parsed: Config = toml::from_str(
        "[notify]\nsystem_roots = false\n[[notify.sinks]]\nname = \"hook\"\nformat = \"webhook\"\n\
         target = \"https://hooks.example.net/x\"\n",
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let dir = jitgate_controller::state::StateDir(tmp.path().join("state"));
    let mut cfg = Config {
        listen: "127.0.0.1:0".into(),
        agent_listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    cfg.notify = parsed.notify;
    jitgate_controller::state::init(&dir, &cfg, &[])
        .await
        .unwrap();
    let err = match jitgate_controller::start(&dir, &cfg).await {
        Ok(_) => panic!("started without a trust store for its https sink"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("no trusted certificate authority"), "{err}");
}

/// A controller process killed (SIGKILL) with deliveries queued and retrying loses none:
/// another process on the same state picks them up and every event arrives, duplicates
/// only with the same delivery id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_controller_loses_nothing() {
    let pki = Pki::new("notify test CA");
    let rx = Receiver::https(&pki, "127.0.0.1").await;
    rx.answer(Answer::Status(503));
    let url = rx.url("https", "127.0.0.1");
    let mut t = setup(pki, &url, 3).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(initiate(&t, 22).await["id"].as_str().unwrap().to_string());
    }
    wait_states(&t, Duration::from_secs(30), |s| {
        s.get(&DeliveryState::Retrying).is_some()
    })
    .await;
    // The same controller as a process of its own (controller.toml and the database as
    // `init` wrote them), attempting and failing, then killed without warning.
    let dir = t.h.dir.0.clone();
    if let Some(s) = t.h.server.take() {
        s.stop().await;
    }
    // `init` writes no `[notify]`: the operator adds it.
    let mut toml = std::fs::read_to_string(t.h.dir.config()).unwrap();
    toml.push_str(&notify_toml(t._tmp.path(), &url, 3));
    std::fs::write(t.h.dir.config(), toml).unwrap();
    let spawn = || {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
            .arg("--state-dir")
            .arg(&dir)
            .arg("run")
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("../run.log")).unwrap())
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    };
    let before = rx.received().len();
    let mut first = spawn();
    let t0 = Instant::now();
    while rx.received().len() <= before {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the controller process attempted nothing: {}",
            std::fs::read_to_string(dir.join("../run.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.kill().await.unwrap();
    first.wait().await.unwrap();
    // The receiver recovers; a new process delivers everything.
    rx.answer(Answer::Status(204));
    let _second = spawn();
    let status = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_jit-controller"))
            .arg("--state-dir")
            .arg(&dir)
            .args(["--json", "notify", "status"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let t0 = Instant::now();
    loop {
        let v = status();
        if v[0]["delivered"] == 3 {
            assert_eq!(v[0]["dead"], 0, "{v}");
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(90), "{v}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got = rx.received();
    got.iter().for_each(check_signed);
    let events = distinct(&got);
    let told: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["request"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(told.len(), 3, "{events:#?}");
    for id in &ids {
        assert!(told.contains(id.as_str()), "{id} lost: {events:#?}");
    }
}
