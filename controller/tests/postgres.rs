//! The same controller on PostgreSQL (a configuration change, not a rewrite).
//!
//! Always on PostgreSQL, whatever `JIT_TEST_BACKEND` says: a throwaway cluster started by
//! the test (jitgate-testpg), or the server named by `JIT_TEST_POSTGRES_URL`. It fails when
//! neither can be had (`cargo xtask setup` installs PostgreSQL). docs/testing.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, one_port, reasons};
use jitgate_api::Role;
use jitgate_api::time::now_ms;
use jitgate_controller::authz::Actor;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_on_postgres() {
    let url = common::fresh_postgres_database().await;
    let mut h = Harness::with_config(|c| c.database_url = Some(url.clone())).await;
    assert_eq!(h.app().db.backend().as_str(), "postgres");
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "*", "allowedSourceAddressPrefixes": ["203.0.113.0/24", "2001:db8:1::/48"],
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let alice = h.token("alice", Role::Requester, "rg:prod").await;
    // approve (v4 and v6), deny with every reason, supersede, revoke
    let req = |src: &str, d: &str| {
        one_port(
            "web1",
            json!({"number": 22, "allowedSourceAddressPrefix": src, "duration": d}),
        )
    };
    let (st, a) = h.initiate(&alice, req("203.0.113.7", "PT1H")).await;
    assert_eq!(st, StatusCode::OK, "{a}");
    assert_eq!(a["status"], "Initiated", "{a}");
    let (_, v6) = h.initiate(&alice, req("2001:db8:1:2::/64", "PT1H")).await;
    assert_eq!(v6["status"], "Initiated", "{v6}");
    let (_, d) = h.initiate(&alice, req("2001:db8::/32", "PT5H")).await;
    assert_eq!(
        reasons(&d),
        vec!["DurationExceedsMaximum", "SourceNotAllowed"],
        "{d}"
    );
    let (_, b) = h.initiate(&alice, req("203.0.113.7", "PT2H")).await;
    let a_id = a["id"].as_str().expect("id");
    let (_, a_now) = h.get(&format!("/api/v1/requests/{a_id}"), &alice).await;
    assert_eq!(
        a_now["virtualMachines"][0]["ports"][0]["statusReason"],
        "NewerRequestInitiated"
    );
    let b_id = b["id"].as_str().expect("id");
    let (st, r) = h
        .call(
            Method::POST,
            &format!("/api/v1/requests/{b_id}/revoke"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{r}");
    assert_eq!(
        r["virtualMachines"][0]["ports"][0]["statusReason"],
        "UserRequested"
    );
    // concurrent initiates (group commit on PostgreSQL)
    let mut tasks = Vec::new();
    for i in 0..20 {
        let client = h.client.clone();
        let url = format!(
            "{}/api/v1/jitNetworkAccessPolicies/default/initiate",
            h.base
        );
        let tok = alice.clone();
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .bearer_auth(tok)
                .json(&one_port(
                    "web2",
                    json!({"number": 22, "allowedSourceAddressPrefix": format!("203.0.113.{}", i % 4), "duration": "PT1H"}),
                ))
                .send()
                .await
                .map(|r| r.status())
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task").expect("send"), StatusCode::OK);
    }
    // applied and expired
    let v6_id = v6["id"].as_str().expect("id");
    for o in h
        .app()
        .lifecycle
        .outbox("web1", 0, 100)
        .await
        .expect("outbox")
    {
        if o.request_id == v6_id {
            h.app()
                .lifecycle
                .acknowledge(&Actor::controller(), &o.grant_id)
                .await
                .expect("ack");
        }
    }
    let (_, v) = h.get(&format!("/api/v1/requests/{v6_id}"), &alice).await;
    assert_eq!(v["status"], "Applied", "{v}");
    assert!(
        h.app()
            .lifecycle
            .expire_due(now_ms() + 10 * 3600 * 1000)
            .await
            .expect("sweep")
            .0
            > 0
    );
    // bad input writes nothing
    let before = h.snapshot().await;
    let (st, _) = h
        .raw(
            Method::POST,
            "/api/v1/jitNetworkAccessPolicies/default/initiate",
            &alice,
            "application/json",
            b"{\"virtualMachines\": [".to_vec(),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(h.snapshot().await, before);
    // activity log: filters, verify, tamper detection, restart
    let (_, log) = h
        .get("/api/v1/activityLog?caller=alice&vm=web1", &h.admin)
        .await;
    assert!(log["value"].as_array().expect("list").len() >= 5);
    let (_, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
    h.restart().await;
    let (_, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(v["ok"], true, "{v}");
    sqlx::query("UPDATE activity SET caller = 'mallory' WHERE seq = 3")
        .execute(h.app().db.pool())
        .await
        .expect("tamper");
    let (_, v) = h.get("/api/v1/activityLog/verify", &h.admin).await;
    assert_eq!(v["firstBadSeq"], 3, "{v}");
}

/// `sslmode=verify-full` with a CA file: the controller talks TLS to a server the CA vouches
/// for (under the name in the URL), and refuses, clearly, a server that another CA vouches for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_on_postgres_over_tls_with_verify_full() {
    use jitgate_controller::app::{App, Parts};
    use jitgate_controller::store::db::DbOptions;

    let cluster =
        tokio::task::spawn_blocking(|| jitgate_testpg::Cluster::builder().tcp().tls().start())
            .await
            .unwrap()
            .expect("a TLS cluster (cargo xtask setup installs PostgreSQL)");
    let db = cluster.create_database().unwrap();
    let url = cluster.tcp_url(&db.name).unwrap();
    assert!(url.contains("sslmode=verify-full"), "{url}");

    let h = Harness::with_config(|c| c.database_url = Some(url.clone())).await;
    // The controller's own sessions are encrypted (PostgreSQL's view of them).
    let ssl: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(h.app().db.pool())
        .await
        .unwrap();
    assert!(ssl, "the controller's session is not TLS");
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "*", "allowedSourceAddressPrefixes": ["203.0.113.0/24"],
                "maxRequestAccessDuration": "PT1H"}]),
    )
    .await;
    let alice = h.token("alice", Role::Requester, "rg:prod").await;
    let (st, a) = h
        .initiate(
            &alice,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.7", "duration": "PT1H"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{a}");
    assert_eq!(a["status"], "Initiated", "{a}");
    drop(h);

    // Another CA does not vouch for this server: the controller does not start.
    let ca = cluster.ca_cert().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let other = cluster.dir().join("other-ca.crt");
    std::fs::write(&other, params.self_signed(&key).unwrap().pem()).unwrap();
    let wrong = url.replace(&ca.display().to_string(), &other.display().to_string());
    assert_ne!(wrong, url);
    let err = App::open(&wrong, &DbOptions::default(), Parts::default())
        .await
        .err()
        .expect("a server the configured CA does not vouch for is refused");
    let msg = format!("{err:#}").to_lowercase();
    assert!(msg.contains("invalid peer certificate"), "{msg}");
}
