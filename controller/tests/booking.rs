//! Booked access through the agent channel (docs/approvals.md "Windows", docs/protocol.md
//! "Levels"), the agent played by a test client over real mutual TLS: a request that books a
//! port ahead is refused while the VM's agent speaks the previous protocol level (it would
//! apply the grant at receipt), and sent as a signed booking to a level-2 agent, which opens
//! it later by itself; the port stays Initiated until the agent reports it open. A booking
//! never supersedes the access someone has now.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::agent::{Agent, enroll};
use common::{Harness, one_port};
use jitgate_api::Role;
use jitgate_api::time::{format, now_ms};
use jitgate_proto::message::Outcome;
use jitgate_proto::{AgentMsg, ControllerMsg, LEVEL_SCHEDULED_GRANTS};
use reqwest::StatusCode;
use serde_json::{Value, json};

fn booked(source: &str, start_ms: i64, duration: &str) -> Value {
    one_port(
        "web1",
        json!({"number": 22, "allowedSourceAddressPrefix": source, "duration": duration,
               "startTimeUtc": format(start_ms)}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_booking_needs_a_level_2_agent_and_opens_on_the_agent() {
    let h = Harness::new().await;
    h.fixture().await;
    h.put_rg_policy(
        "prod",
        json!([{"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
                "maxRequestAccessDuration": "PT3H"}]),
    )
    .await;
    let alice = h.token("alice", Role::Requester, "rg:prod").await;
    let c = enroll(&h, "web1").await;

    // An agent of the previous level: a booking is refused, naming the VM; nothing written.
    let mut old = Agent::connect(&c).await;
    old.handshake_at(&c, 0, 1).await;
    let before = h.snapshot().await;
    let (st, v) = h
        .initiate(&alice, booked("203.0.113.5", now_ms() + 3_600_000, "PT1H"))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert_eq!(v["error"]["code"], "AgentTooOld", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("web1"),
        "{v}"
    );
    assert_eq!(h.snapshot().await, before);
    // Access that starts now still works with it.
    let (st, v) = h
        .initiate(
            &alice,
            one_port(
                "web1",
                json!({"number": 22, "allowedSourceAddressPrefix": "203.0.113.5", "duration": "PT1H"}),
            ),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let now_id = v["id"].as_str().unwrap().to_string();
    let g = match old.recv().await {
        ControllerMsg::Grant(s) => s.verify(&c.signing, c.id).expect("grant"),
        m => panic!("expected a grant, got {m:?}"),
    };
    old.send(&AgentMsg::GrantResult {
        grant_id: g.grant_id,
        seq: g.seq,
        outcome: Outcome::Applied {
            agent_unix_ms: now_ms(),
        },
    })
    .await;
    h.status_within(&alice, &now_id, "Applied").await;
    drop(old);

    // The same agent, upgraded: the booking is accepted and sent as a signed booking.
    let mut a = Agent::connect(&c).await;
    a.handshake_at(&c, g.seq, LEVEL_SCHEDULED_GRANTS).await;
    let start = now_ms() + 3_600_000;
    let (st, v) = h
        .initiate(&alice, booked("203.0.113.5", start, "PT1H"))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "Initiated", "{v}");
    let port = &v["virtualMachines"][0]["ports"][0];
    assert_eq!(port["startTimeUtc"], format(start), "{v}");
    assert_eq!(port["endTimeUtc"], format(start + 3_600_000), "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    let b = match a.recv().await {
        ControllerMsg::ScheduledGrant(s) => {
            // A booking's signature is not a grant's.
            s.verify(&c.signing, c.id).expect("booking verifies")
        }
        m => panic!("expected a booking, got {m:?}"),
    };
    assert_eq!(b.grant.request_id, id);
    assert_eq!(b.grant.start_unix_ms, start);
    assert!(
        (3_500_000..=3_600_000).contains(&b.starts_in_ms),
        "starts in {} ms",
        b.starts_in_ms
    );
    assert!((7_100_000..=7_200_000).contains(&b.grant.remaining_ms));
    // The booking supersedes nothing: the access granted now stays.
    let (_, v) = h.get(&format!("/api/v1/requests/{now_id}"), &alice).await;
    assert_eq!(v["status"], "Applied", "{v}");
    // Scheduled on the agent: still Initiated. Opened: Applied.
    a.send(&AgentMsg::GrantResult {
        grant_id: b.grant.grant_id,
        seq: b.grant.seq,
        outcome: Outcome::Scheduled {
            agent_unix_ms: now_ms(),
            opens_unix_ms: start,
        },
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, v) = h.get(&format!("/api/v1/requests/{id}"), &alice).await;
    assert_eq!(v["status"], "Initiated", "{v}");
    a.send(&AgentMsg::GrantResult {
        grant_id: b.grant.grant_id,
        seq: b.grant.seq,
        outcome: Outcome::Applied {
            agent_unix_ms: start,
        },
    })
    .await;
    h.status_within(&alice, &id, "Applied").await;

    // Revoked before its start: a signed Revoke reaches the agent.
    let (_, v) = h
        .initiate(&alice, booked("203.0.113.6", now_ms() + 7_200_000, "PT30M"))
        .await;
    let id2 = v["id"].as_str().unwrap().to_string();
    let b2 = match a.recv().await {
        ControllerMsg::ScheduledGrant(s) => s.verify(&c.signing, c.id).expect("booking"),
        m => panic!("expected a booking, got {m:?}"),
    };
    let (st, _) = h.revoke(&alice, &id2).await;
    assert_eq!(st, StatusCode::OK);
    match a.recv().await {
        ControllerMsg::Revoke(s) => {
            let r = s.verify(&c.signing, c.id).expect("revoke");
            assert_eq!(r.grant_id, b2.grant.grant_id);
        }
        m => panic!("expected a revoke, got {m:?}"),
    }
}
