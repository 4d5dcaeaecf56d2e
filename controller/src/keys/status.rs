//! The keys as administrators see them through the API, `jit keys` and the portal
//! (`GET /api/v1/keys`): states, times, acknowledgements; never a private half or where it is
//! kept.

use std::time::Duration;

use jitgate_api::{GrantKey, GrantKeyState, KeyAgent, KeyStatus};
use jitgate_proto::KeyStep;

use super::rotation::{AgentKeyState, agent_views, switch_due};
use crate::authz::{self, Action, Caller};
use crate::error::Result;
use crate::store::db::Db;
use crate::store::grant_keys::{self, KeyState};

fn wire_state(s: KeyState) -> GrantKeyState {
    match s {
        KeyState::Current => GrantKeyState::Current,
        KeyState::Next => GrantKeyState::Next,
        KeyState::Retired => GrantKeyState::Retired,
    }
}

/// Every key, and during a rotation the active agents that have not acknowledged the
/// announced key (admin on `*`). `grace`: `[keys] switch_grace_seconds`.
pub async fn key_status(db: &Db, caller: &Caller, grace: Duration) -> Result<KeyStatus> {
    authz::authorize(caller, Action::ReadKeys)?;
    let rows = grant_keys::all(db.pool()).await?;
    let mut keys = Vec::with_capacity(rows.len());
    let mut rotating_to = None;
    let mut switch_due_time = None;
    let mut lacking = Vec::new();
    for r in &rows {
        let announced = r.announcement.is_some();
        let acknowledged = if announced {
            let n = grant_keys::acks_for_key(db.pool(), &r.key_id)
                .await?
                .iter()
                .filter(|(_, s)| s == KeyStep::Announced.as_str())
                .count();
            Some(u64::try_from(n).unwrap_or(u64::MAX))
        } else {
            None
        };
        let not_acknowledged = if r.state == KeyState::Next {
            rotating_to = Some(r.key_id.clone());
            let due = switch_due(db, r, grace).await?;
            switch_due_time = Some(jitgate_api::time::format(due.due_ms));
            lacking = due.lacking;
            agent_views(db, &r.key_id)
                .await?
                .into_iter()
                .filter(|a| a.state != AgentKeyState::Acknowledged)
                .map(|a| KeyAgent {
                    agent_id: a.agent_id,
                    virtual_machine: a.virtual_machine,
                    protocol: a.protocol,
                    online: a.online,
                    state: a.state,
                })
                .collect()
        } else {
            Vec::new()
        };
        keys.push(GrantKey {
            key_id: r.key_id.clone(),
            state: wire_state(r.state),
            created_time_utc: jitgate_api::time::format(r.created_ms),
            announced_time_utc: announced.then(|| jitgate_api::time::format(r.created_ms)),
            switched_time_utc: r.switched_ms.map(jitgate_api::time::format),
            retired_time_utc: r.retired_ms.map(jitgate_api::time::format),
            acknowledged,
            not_acknowledged,
        });
    }
    Ok(KeyStatus {
        keys,
        rotating_to,
        switch_grace_seconds: grace.as_secs(),
        switch_due_time_utc: switch_due_time,
        controllers_lacking_key: lacking,
    })
}
