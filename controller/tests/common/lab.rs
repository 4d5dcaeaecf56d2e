//! The portal's test lab, shared by the HTTPS and the Chromium tests: an inventory with a VM
//! in each tab, a policy whose RDP port needs an approver, and a test agent for web2.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use jitgate_controller::authz::Caller;
use jitgate_proto::message::Outcome;
use jitgate_proto::{AgentMsg, ControllerMsg};
use serde_json::json;

use super::Harness;
use super::agent::{Agent, Creds, enroll};

/// Strings meant to break out of HTML text or attributes, or to run as a URL, and a bidi
/// control that reorders what is shown.
pub const HOSTILE: &str =
    "<script>alert(1)</script>\"><img src=x onerror=alert(2)> javascript:alert(3) \u{202e}cba";

/// Standard inventory plus: prod's policy on 22 and 3389 (3389 needs an approver of
/// jit-admins), an agent for web2 (online), a hostile owner for dev.
pub async fn lab(h: &Harness) -> (Agent, Creds) {
    h.fixture().await;
    h.app()
        .inventory
        .add_group(&Caller::local(), "ops", HOSTILE)
        .await
        .unwrap();
    h.app()
        .inventory
        .add_vm(
            &Caller::local(),
            "tools1",
            "ops",
            &["198.51.100.7".parse().unwrap()],
        )
        .await
        .unwrap();
    h.put_rg_policy(
        "prod",
        json!([
            {"number": 22, "protocol": "TCP", "allowedSourceAddressPrefix": "*",
             "maxRequestAccessDuration": "PT3H"},
            {"number": 3389, "protocol": "TCP", "allowedSourceAddressPrefix": "203.0.113.0/24",
             "maxRequestAccessDuration": "PT3H",
             "approval": {"stages": [{"approvers": ["group:jit-admins"], "required": 1}]}}
        ]),
    )
    .await;
    let creds = enroll(h, "web2").await;
    let mut agent = Agent::connect(&creds).await;
    agent.handshake(&creds, 0).await;
    (agent, creds)
}

/// Receives the next grant as the agent and reports it applied.
pub async fn apply_next_grant(agent: &mut Agent, creds: &Creds) {
    let grant = match agent.recv_within(Duration::from_secs(5)).await {
        Some(ControllerMsg::Grant(g)) => g.verify(&creds.signing, creds.id).unwrap(),
        m => panic!("expected a grant, got {m:?}"),
    };
    agent
        .send(&AgentMsg::GrantResult {
            grant_id: grant.grant_id,
            seq: grant.seq,
            outcome: Outcome::Applied { agent_unix_ms: 1 },
        })
        .await;
}
