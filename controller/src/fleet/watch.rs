//! Tells when an agent goes offline and when it comes back (`agent.offline`,
//! `agent.back_online`). An agent counts as offline when no controller of the cluster has its
//! channel and it was last heard from more than the grace ago (`notify.agent_offline_after_seconds`),
//! so that an agent restart, or a controller restart that drops every channel for a moment,
//! stays quiet. Each change is told once across controllers: the `offline_told` flag flips
//! in the transaction that writes the event.

use jitgate_notify::event::AgentInfo;
use jitgate_notify::{Event, EventDetails};

use crate::error::Result;
use crate::outbox::event::time_of;
use crate::presence::Presence;
use crate::store::agents::{self, WatchRow};
use crate::store::db::Db;
use crate::store::notify;

/// One look at every agent. `since_ms` is when this controller began serving agents: until
/// a grace has passed, agents may still be reconnecting and nothing is judged offline.
/// Returns how many changes were told.
pub async fn check(
    db: &Db,
    presence: &Presence,
    now: i64,
    grace_ms: i64,
    since_ms: i64,
) -> Result<usize> {
    let settled = now.saturating_sub(since_ms) >= grace_ms;
    let rows = agents::watched(db.pool(), now.saturating_sub(grace_ms)).await?;
    let changes: Vec<(&WatchRow, bool)> = rows
        .iter()
        .filter_map(|r| {
            let online = presence.online(&r.id, r.last_seen_ms, now);
            let told = r.offline_told != 0;
            let gone = !online
                && r.last_seen_ms
                    .is_some_and(|l| now.saturating_sub(l) >= grace_ms);
            if settled && gone && !told {
                Some((r, true))
            } else if online && told {
                Some((r, false))
            } else {
                None
            }
        })
        .collect();
    if changes.is_empty() {
        return Ok(0);
    }
    let mut w = db.begin().await?;
    let mut events = Vec::new();
    for (r, offline) in changes {
        if !agents::set_offline_told(&mut w, &r.id, !offline, offline).await? {
            continue;
        }
        let agent = AgentInfo {
            virtual_machine: r.vm.clone(),
            resource_group: r.resource_group.clone(),
            last_seen_utc: r.last_seen_ms.map(time_of),
        };
        let details = if offline {
            tracing::warn!(agent = %r.id, vm = %r.vm, "agent offline");
            EventDetails::AgentOffline { agent }
        } else {
            tracing::info!(agent = %r.id, vm = %r.vm, "agent back online");
            EventDetails::AgentBackOnline { agent }
        };
        events.push(Event::new(details, time_of(now), None));
    }
    let n = events.len();
    notify::insert_events(&mut w, &events).await?;
    w.commit().await?;
    Ok(n)
}
