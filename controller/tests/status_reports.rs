//! Agents' status reports over the real agent channel (SQLite, or PostgreSQL with
//! `JIT_TEST_BACKEND=postgres`): a report that says what the last one said is not written
//! again within `STATUS_REWRITE_EVERY` (20 s), one that changes anything is.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::Harness;
use common::agent::{Agent, enroll};
use jitgate_proto::AgentMsg;
use jitgate_proto::message::{Heartbeat, StatusReport};
use serde_json::{Value, json};

fn report(grants: u32) -> AgentMsg {
    AgentMsg::Status(Box::new(StatusReport {
        heartbeat: Heartbeat {
            interfaces: vec![("eth0".into(), "native".into())],
            protected: vec![],
            listening: vec![],
            active_grants: grants,
            audit_head: "ab".repeat(32),
            audit_seq: 9,
        },
        addresses: vec![("eth0".into(), "192.0.2.11".into())],
        problems: vec![],
        agent_unix_ms: jitgate_api::time::now_ms(),
    }))
}

/// The stored report of the only agent, once it says `grants` active grants.
async fn stored(h: &Harness, grants: u32) -> Value {
    for _ in 0..200 {
        let hb: Option<String> = sqlx::query_scalar("SELECT heartbeat FROM agents")
            .fetch_one(h.app().db.pool())
            .await
            .unwrap();
        if let Some(v) = hb.map(|s| serde_json::from_str::<Value>(&s).unwrap())
            && v["activeGrants"] == grants
        {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no stored report with {grants} grants");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unchanged_report_is_not_rewritten() {
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let c = enroll(&h, "web1").await;
    let mut a = Agent::connect(&c).await;
    a.handshake(&c, 0).await;

    a.send(&report(2)).await;
    let first = stored(&h, 2).await;
    assert!(first["receivedMs"].is_i64(), "{first}");
    // The same report again, later: three flushes pass and the stored one stays.
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.send(&report(2)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(stored(&h, 2).await["receivedMs"], first["receivedMs"]);
    // A change is written at once.
    a.send(&report(3)).await;
    let changed = stored(&h, 3).await;
    assert!(
        changed["receivedMs"].as_i64().unwrap() > first["receivedMs"].as_i64().unwrap(),
        "{changed}"
    );
}
