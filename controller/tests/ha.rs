//! Several controllers on ONE PostgreSQL database acting as one for the agent channel
//! (docs/ha.md): a grant, revoke or policy change committed through controller A reaches an
//! agent connected to controller B (pushed by `NOTIFY`), a commit lost to the push is
//! caught up, and every controller lists the agents connected to any of them.
//!
//! Always on PostgreSQL, whatever `JIT_TEST_BACKEND` says (like tests/postgres.rs): a
//! throwaway cluster (jitgate-testpg) or the server named by `JIT_TEST_POSTGRES_URL`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::agent::{Agent, Creds, enroll};
use common::{Harness, ssh_request as request};
use jitgate_api::Role;
use jitgate_controller::authz::Caller;
use jitgate_controller::cluster::CATCH_UP_EVERY;
use jitgate_proto::message::Outcome;
use jitgate_proto::{AgentMsg, ControllerMsg, GrantBody, RevokeBody};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::Row;

/// Generous bound for a push from one controller to an agent on another (typically a few
/// milliseconds; the bound only has to hold on a loaded 2-core machine).
const PUSH_WITHIN: Duration = Duration::from_secs(5);

/// Controller A and controller B on one fresh database, the standard fixture, a policy for
/// prod, and a requester token.
async fn two_controllers() -> (Harness, Harness, String) {
    let url = common::fresh_postgres_database().await;
    let a = Harness::with_config(|c| c.database_url = Some(url.clone())).await;
    assert_eq!(a.app().db.backend().as_str(), "postgres");
    let alice = a.prod_with_requester().await;
    let b = a.second().await;
    (a, b, alice)
}

/// An agent of `vm`, enrolled through `via`, connected to `to`'s agent channel.
async fn agent_on(via: &Harness, to: &Harness, vm: &str) -> (Creds, Agent) {
    let mut c = enroll(via, vm).await;
    c.endpoint = to.server.as_ref().expect("running").agent_addr.to_string();
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;
    (c, a)
}

async fn grant_within(a: &mut Agent, c: &Creds, within: Duration) -> GrantBody {
    match a.recv_within(within).await {
        Some(ControllerMsg::Grant(s)) => s.verify(&c.signing, c.id).expect("grant verifies"),
        m => panic!("expected a grant within {within:?}, got {m:?}"),
    }
}

async fn revoke_within(a: &mut Agent, c: &Creds, within: Duration) -> RevokeBody {
    match a.recv_within(within).await {
        Some(ControllerMsg::Revoke(s)) => s.verify(&c.signing, c.id).expect("revoke verifies"),
        m => panic!("expected a revocation within {within:?}, got {m:?}"),
    }
}

/// Polls `f` every 100 ms until it holds or `within` passes; returns whether it held.
async fn eventually<F, Fut>(within: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The agent's `connection` as a controller's `GET /api/v1/agents` shows it.
async fn connection(h: &Harness, agent: &Creds) -> String {
    let (st, v) = h.get("/api/v1/agents", &h.admin).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["value"]
        .as_array()
        .expect("agents")
        .iter()
        .find(|x| x["agentId"] == agent.id.to_string())
        .map(|x| x["connection"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grant_revoke_and_policy_committed_on_a_reach_an_agent_on_b() {
    let (a, b, alice) = two_controllers().await;
    let (c, mut agent) = agent_on(&a, &b, "web1").await;
    // web2's agent on A, and B's wakeups of db1: a commit wakes only the connections of the
    // VMs it touched, on every controller.
    let (c2, mut agent2) = agent_on(&a, &a, "web2").await;
    let db1 = b.app().notifier.subscribe("db1", "dev");
    assert_eq!(a.app().presence.live_agents(), [c2.id.to_string()]);
    assert_eq!(b.app().presence.live_agents(), [c.id.to_string()]);
    let notices = b.app().cluster.notices_applied();

    // Grant: initiated through A's API, pushed by B.
    let t0 = Instant::now();
    let (st, v) = a.initiate(&alice, request("web1", "203.0.113.7")).await;
    assert_eq!(
        (st, v["status"].as_str()),
        (StatusCode::OK, Some("Initiated")),
        "{v}"
    );
    let g = grant_within(&mut agent, &c, PUSH_WITHIN).await;
    let grant_ms = t0.elapsed().as_millis();
    assert_eq!(g.request_id, v["id"].as_str().expect("id"));
    assert_eq!(g.source.to_string(), "203.0.113.7/32");
    assert!(
        b.app().cluster.notices_applied() > notices,
        "B was told by A's notification"
    );
    assert!(
        agent2
            .recv_within(Duration::from_millis(300))
            .await
            .is_none(),
        "web2's agent was sent nothing"
    );
    assert!(!db1.pending().any(), "db1 was not woken");
    // The agent's acknowledgement through B makes the request Applied, as A shows it.
    agent
        .send(&AgentMsg::GrantResult {
            grant_id: g.grant_id,
            seq: g.seq,
            outcome: Outcome::Applied { agent_unix_ms: 1 },
        })
        .await;
    let rid = v["id"].as_str().expect("id").to_string();
    assert!(
        eventually(Duration::from_secs(10), || async {
            a.get(&format!("/api/v1/requests/{rid}"), &alice).await.1["status"] == "Applied"
        })
        .await,
        "the acknowledgement through B is seen by A"
    );

    // Revoke through A.
    let t0 = Instant::now();
    let (st, r) = a.revoke(&alice, &rid).await;
    assert_eq!(st, StatusCode::OK, "{r}");
    let rv = revoke_within(&mut agent, &c, PUSH_WITHIN).await;
    let revoke_ms = t0.elapsed().as_millis();
    assert_eq!(
        (rv.grant_id, rv.reason.as_str()),
        (g.grant_id, "UserRequested")
    );
    assert!(rv.seq > g.seq);

    // A policy change through A.
    let t0 = Instant::now();
    a.put_vm_policy(
        "web1",
        json!([{"number": 2222, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT1H"}]),
    )
    .await;
    let p = match agent.recv_within(PUSH_WITHIN).await {
        Some(ControllerMsg::Policy(s)) => s.verify(&c.signing, c.id).expect("policy verifies"),
        m => panic!("expected a policy within {PUSH_WITHIN:?}, got {m:?}"),
    };
    let policy_ms = t0.elapsed().as_millis();
    assert_eq!(
        p.ports.iter().map(|x| x.port.get()).collect::<Vec<_>>(),
        [2222]
    );
    assert!(!db1.pending().any(), "db1 was not woken by web1's policy");
    // For comparison: a grant through A to an agent on A.
    let t0 = Instant::now();
    let (_, v2) = a.initiate(&alice, request("web2", "203.0.113.8")).await;
    assert_eq!(v2["status"], "Initiated", "{v2}");
    let g2 = grant_within(&mut agent2, &c2, PUSH_WITHIN).await;
    let local_ms = t0.elapsed().as_millis();
    assert_eq!(g2.request_id, v2["id"].as_str().expect("id"));
    eprintln!(
        "A -> agent on B: grant {grant_ms} ms, revoke {revoke_ms} ms, policy {policy_ms} ms; \
         A -> agent on A: grant {local_ms} ms"
    );
    // Revoking the agent through A closes its connection on B (pushed; B does not poll).
    let t0 = Instant::now();
    let ids = a
        .app()
        .fleet
        .revoke_agents(&Caller::local(), "web1")
        .await
        .expect("revoke agent");
    assert_eq!(ids, [c.id.to_string()]);
    assert!(
        agent.closed_within(PUSH_WITHIN).await,
        "B closes the revoked agent's connection"
    );
    eprintln!(
        "agent revoked on A, closed by B after {} ms",
        t0.elapsed().as_millis()
    );
    assert!(
        !agent2.closed_within(Duration::from_millis(300)).await,
        "web2's agent stays connected"
    );
    let usage = b.app().cluster.notification_queue_usage();
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.app().cluster.notification_queue_usage().is_some()
        })
        .await,
        "B samples the notification queue: {usage:?}"
    );
    let usage = b.app().cluster.notification_queue_usage().unwrap_or(1.0);
    assert!((0.0..0.5).contains(&usage), "queue usage {usage}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_connected_to_b_are_online_on_a() {
    let (a, b, _) = two_controllers().await;
    let c = enroll(&a, "web1").await;
    assert_eq!(connection(&a, &c).await, "offline");
    let mut c_b = c;
    c_b.endpoint = b.server.as_ref().expect("running").agent_addr.to_string();
    let mut agent = Agent::connect(&c_b).await;
    agent.handshake(&c_b, 0).await;
    assert!(
        a.app().presence.live_agents().is_empty(),
        "not connected to A"
    );
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(15), || async {
            connection(&a, &c_b).await == "online"
        })
        .await,
        "A lists the agent connected to B"
    );
    let online_ms = t0.elapsed().as_millis();
    let (_, vms) = a.get("/api/v1/virtualMachines", &a.admin).await;
    let web1 = vms["value"]
        .as_array()
        .expect("vms")
        .iter()
        .find(|v| v["name"] == "web1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(web1["status"], "online", "{web1}");
    // The agent never answered a ping here: B's presence refresh, not a pong, marks it
    // seen (no write per pong on PostgreSQL).
    let last_seen = || async {
        sqlx::query("SELECT last_seen_ms FROM agents WHERE id = $1")
            .bind(c_b.id.to_string())
            .fetch_one(a.app().db.pool())
            .await
            .expect("agent")
            .get::<Option<i64>, _>(0)
            .unwrap_or(0)
    };
    sqlx::query("UPDATE agents SET last_seen_ms = 0")
        .execute(a.app().db.pool())
        .await
        .expect("age last_seen");
    assert!(
        eventually(Duration::from_secs(15), || async { last_seen().await > 0 }).await,
        "the presence refresh marks the agent seen"
    );
    // An administration command (`jit-controller agents`, another process, serving no
    // agent) reads the presence rows.
    let url = a.cfg.database_url.clone().expect("database URL");
    let admin = jitgate_controller::App::open(
        &url,
        &jitgate_controller::store::DbOptions::default(),
        jitgate_controller::app::Parts::default(),
    )
    .await
    .expect("open");
    let now = jitgate_api::time::now_ms();
    let id = c_b.id.to_string();
    assert!(!admin.presence.in_cluster(&id, now), "nothing read yet");
    jitgate_controller::cluster::read_presence(&admin.db, &admin.presence)
        .await
        .expect("presence");
    assert!(admin.presence.in_cluster(&id, now));
    let listed: Vec<String> = admin
        .fleet
        .agents(&Caller::local())
        .await
        .expect("agents")
        .into_iter()
        .map(|x| x.connection.as_str().to_string())
        .collect();
    assert_eq!(listed, ["online"]);
    admin.close().await;
    // One row in the database, naming one controller.
    let rows = sqlx::query("SELECT agent_id, controller FROM agent_presence")
        .fetch_all(a.app().db.pool())
        .await
        .expect("presence rows");
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<String, _>(0), c_b.id.to_string());
    assert_eq!(rows[0].get::<String, _>(1), b.app().notifier.origin());
    // Gone from B: offline on A too.
    drop(agent);
    let t0 = Instant::now();
    assert!(
        eventually(Duration::from_secs(20), || async {
            connection(&a, &c_b).await == "offline"
        })
        .await,
        "A sees the agent leave B"
    );
    eprintln!(
        "agent on B listed online by A after {online_ms} ms, offline after {} ms",
        t0.elapsed().as_millis()
    );
}

/// Outbox work committed without a notification (as if the `NOTIFY` were lost) reaches the
/// agent by the periodic catch-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_notification_is_caught_up() {
    let (a, b, alice) = two_controllers().await;
    let (c, mut agent) = agent_on(&a, &b, "web1").await;
    let (_, v) = a.initiate(&alice, request("web1", "203.0.113.9")).await;
    assert_eq!(v["status"], "Initiated", "{v}");
    let g = grant_within(&mut agent, &c, PUSH_WITHIN).await;
    // The initiate's notice is applied (so that none is still on its way below).
    assert!(
        eventually(Duration::from_secs(10), || async {
            b.app().cluster.notices_applied() >= 1
        })
        .await
    );
    let notices = b.app().cluster.notices_applied();
    let woken = b.app().notifier.woken();
    // A revocation written straight into the database: a counter seq, the grant's state and
    // an outbox row in one transaction, and no NOTIFY.
    let pool = a.app().db.pool();
    let mut tx = pool.begin().await.expect("begin");
    let seq: i64 =
        sqlx::query("UPDATE counters SET value = value + 1 WHERE name = 'outbox' RETURNING value")
            .fetch_one(&mut *tx)
            .await
            .expect("outbox seq")
            .get(0);
    sqlx::query("UPDATE grants SET state = 'revoked' WHERE id = $1")
        .bind(g.grant_id.to_string())
        .execute(&mut *tx)
        .await
        .expect("grant state");
    sqlx::query(
        "INSERT INTO grant_outbox (seq, vm, op, grant_id, replaces, created_ms) \
         VALUES ($1, 'web1', 'revoke', $2, '', 0)",
    )
    .bind(seq)
    .bind(g.grant_id.to_string())
    .execute(&mut *tx)
    .await
    .expect("outbox row");
    tx.commit().await.expect("commit");
    let t0 = Instant::now();
    // Within the catch-up period, with a wide margin for a loaded machine.
    let within = CATCH_UP_EVERY * 2 + Duration::from_secs(8);
    let r = revoke_within(&mut agent, &c, within).await;
    let caught_ms = t0.elapsed().as_millis();
    assert_eq!(
        (r.grant_id, r.seq),
        (g.grant_id, u64::try_from(seq).expect("seq"))
    );
    assert_eq!(
        b.app().cluster.notices_applied(),
        notices,
        "no notification carried it"
    );
    assert!(
        b.app().notifier.woken() > woken,
        "the catch-up woke the connection"
    );
    // A's commits stop notifying (what a nearly full notification queue does): an initiate
    // through A still reaches the agent on B, by the catch-up.
    assert!(a.app().notifier.set_push(false));
    let t1 = Instant::now();
    let (_, v) = a.initiate(&alice, request("web1", "203.0.113.10")).await;
    assert_eq!(v["status"], "Initiated", "{v}");
    let g2 = grant_within(&mut agent, &c, within).await;
    let unpushed_ms = t1.elapsed().as_millis();
    assert_eq!(g2.request_id, v["id"].as_str().expect("id"));
    assert_eq!(b.app().cluster.notices_applied(), notices);
    eprintln!(
        "lost notification caught up after {caught_ms} ms, unpushed grant after {unpushed_ms} ms (catch-up every {CATCH_UP_EVERY:?})"
    );
}

/// Decisions on one pending request made through two controllers at once have exactly one
/// outcome (each decision locks the request under the counters row, whichever controller
/// runs it), and an approval that completes a request through A reaches the agent on B.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_decisions_on_two_controllers_have_one_outcome() {
    let (a, b, alice) = two_controllers().await;
    a.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H",
                "approval": {"stages": [{"approvers": ["group:leads"], "required": 1}]}}]),
    )
    .await;
    let ann = a.token_in("ann", Role::Reader, "*", &["leads"]).await;
    let ben = a.token_in("ben", Role::Reader, "*", &["leads"]).await;
    let (c, mut agent) = agent_on(&a, &b, "web1").await;
    let mut approved = 0;
    for round in 0..8 {
        let (_, r) = a
            .initiate(
                &alice,
                request("web1", &format!("203.0.113.{}", 10 + round)),
            )
            .await;
        assert_eq!(r["status"], "PendingApproval", "{r}");
        let id = r["id"].as_str().unwrap().to_string();
        let (x, y, z) = tokio::join!(
            decide(&a, &ann, &id, "approve", None),
            decide(&b, &ben, &id, "deny", Some(json!({"reason": "race"}))),
            decide(&b, &alice, &id, "cancel", None),
        );
        let ok: Vec<&(StatusCode, Value)> = [&x, &y, &z]
            .into_iter()
            .filter(|r| r.0 == StatusCode::OK)
            .collect();
        assert_eq!(ok.len(), 1, "round {round}: {x:?} {y:?} {z:?}");
        for r in [&x, &y, &z] {
            assert!(
                r.0 == StatusCode::OK || r.1["error"]["code"] == "RequestNotPending",
                "round {round}: {r:?}"
            );
        }
        let (_, v) = b.get(&format!("/api/v1/requests/{id}"), &alice).await;
        assert_eq!(v["approvals"].as_array().unwrap().len(), 1, "{v}");
        if v["status"] == "Initiated" {
            approved += 1;
            // Approved through A: the agent connected to B gets the grant.
            let g = grant_within(&mut agent, &c, PUSH_WITHIN).await;
            assert_eq!(g.request_id, id);
        }
    }
    eprintln!("{approved} of 8 rounds ended approved");
}

/// `POST /api/v1/requests/{id}/{what}` through `h`.
async fn decide(
    h: &Harness,
    token: &str,
    id: &str,
    what: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    h.call(
        reqwest::Method::POST,
        &format!("/api/v1/requests/{id}/{what}"),
        Some(token),
        body,
    )
    .await
}

/// Controllers started at the same moment against one new PostgreSQL database (a rolling
/// deployment's first start): one applies the migrations, the others wait for it and find
/// them applied; every one starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controllers_starting_together_migrate_once() {
    use jitgate_controller::app::{App, Parts};
    use jitgate_controller::store::DbOptions;
    use jitgate_controller::store::db::migration_versions;
    for _ in 0..3 {
        let url = common::fresh_postgres_database().await;
        let opts = DbOptions::default();
        let open = || App::open(&url, &opts, Parts::default());
        let (a, b, c) = tokio::join!(open(), open(), open());
        let (a, b, c) = (a.expect("first"), b.expect("second"), c.expect("third"));
        let rows = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
            .fetch_all(a.db.pool())
            .await
            .unwrap();
        let versions: Vec<i64> = rows.iter().map(|r| r.get::<i64, _>(0)).collect();
        assert_eq!(versions, migration_versions());
        for app in [a, b, c] {
            app.close().await;
        }
    }
}

/// Write transactions committed through three controllers at once all commit, and each
/// takes a request number of its own: the counter rows are locked in one order on every
/// controller. (Locked in scan order, which moves as each update writes a new row version,
/// two transactions each held a counter the other waited for, and PostgreSQL rolled one
/// back as a deadlock: initiates answered 500 under load on several controllers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writes_on_three_controllers_never_deadlock() {
    use jitgate_controller::store::write::Counter;
    const EACH: usize = 150;
    let (a, b, _) = two_controllers().await;
    let c = a.second().await;
    let run = |h: &Harness| {
        let db = h.app().db.clone();
        tokio::spawn(async move {
            let mut seqs = Vec::with_capacity(EACH);
            for i in 0..EACH {
                let mut w = db
                    .writer()
                    .begin()
                    .await
                    .unwrap_or_else(|e| panic!("begin {i}: {e}"));
                seqs.push(w.next(Counter::Request));
                w.commit()
                    .await
                    .unwrap_or_else(|e| panic!("commit {i}: {e}"));
            }
            seqs
        })
    };
    let (x, y, z) = tokio::join!(run(&a), run(&b), run(&c));
    let mut all: Vec<i64> = [x, y, z]
        .into_iter()
        .flat_map(|r| r.expect("no transaction failed"))
        .collect();
    all.sort_unstable();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "a request number was taken twice");
    assert_eq!(n, 3 * EACH);
}
