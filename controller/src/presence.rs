//! Which agents have a live channel connection: to this controller (counted here), and, on
//! PostgreSQL, to any controller of the cluster (the `agent_presence` rows, which `cluster`
//! writes in batches and reads back here). A value owned by the running controller (never
//! process-wide): two controllers in one process each count only their own connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use jitgate_api::{AgentConnection, AgentStatus};

use crate::store::agents::{Heartbeat, ONLINE_WITHIN_MS};

#[derive(Clone, Debug, Default)]
pub struct Presence {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Connections per agent (counted: a reconnect may overlap the old connection's end).
    live: Mutex<HashMap<String, usize>>,
    /// Set once this controller serves the agent channel: from then on a live connection,
    /// not a recent `last_seen`, says whether an agent is online.
    serving: AtomicBool,
    /// Agents connected to any controller of the cluster, with the expiry of that knowledge.
    cluster: Mutex<HashMap<String, i64>>,
    /// A connection began or ended: the presence rows are due for a refresh.
    changed: Notify,
}

impl Presence {
    pub fn new() -> Presence {
        Presence::default()
    }

    /// This controller serves the agent channel.
    pub fn set_serving(&self) {
        self.inner.serving.store(true, Ordering::Relaxed);
    }

    /// Marks an agent connected until the guard is dropped.
    pub fn connected(&self, agent: &str) -> LiveGuard {
        if let Ok(mut m) = self.inner.live.lock() {
            *m.entry(agent.to_string()).or_default() += 1;
        }
        self.inner.changed.notify_one();
        LiveGuard {
            presence: self.clone(),
            agent: agent.to_string(),
        }
    }

    /// Whether the agent has a live connection to this controller.
    pub fn is_live(&self, agent: &str) -> bool {
        self.inner
            .live
            .lock()
            .map(|m| m.contains_key(agent))
            .unwrap_or(false)
    }

    /// Agents connected to this controller.
    pub fn live_agents(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .inner
            .live
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Connected to this controller or, as last read, to any controller of the cluster;
    /// else, unless this controller serves agents, heard from within [`ONLINE_WITHIN_MS`]
    /// (administration commands run in another process; on SQLite they have no presence).
    pub fn online(&self, agent: &str, last_seen: Option<i64>, now: i64) -> bool {
        if self.is_live(agent) || self.in_cluster(agent, now) {
            true
        } else if self.inner.serving.load(Ordering::Relaxed) {
            false
        } else {
            last_seen.is_some_and(|l| now - l <= ONLINE_WITHIN_MS)
        }
    }

    /// Whether the cluster's presence rows, as last read, say the agent is connected.
    pub fn in_cluster(&self, agent: &str, now: i64) -> bool {
        self.inner
            .cluster
            .lock()
            .map(|m| m.get(agent).is_some_and(|&exp| exp > now))
            .unwrap_or(false)
    }

    /// The cluster's presence as just read: agent -> expiry (ms).
    pub fn set_cluster(&self, present: HashMap<String, i64>) {
        if let Ok(mut m) = self.inner.cluster.lock() {
            *m = present;
        }
    }

    /// Waits until a connection began or ended (since the last wait).
    pub async fn changed(&self) {
        self.inner.changed.notified().await;
    }
}

impl Presence {
    /// How the API, `jit` and the portal show an agent, by one rule: revoked; offline
    /// (neither connected nor heard from); degraded (connected, but enforcement detached,
    /// partial or unhealthy, or reports stopped), with the reasons; else online.
    pub fn shown(
        &self,
        agent: &str,
        status: &AgentStatus,
        last_seen: Option<i64>,
        report: Option<&Heartbeat>,
        now: i64,
    ) -> (AgentConnection, Vec<String>) {
        if *status != AgentStatus::Active {
            return (AgentConnection::Revoked, Vec::new());
        }
        if !self.online(agent, last_seen, now) {
            return (AgentConnection::Offline, Vec::new());
        }
        match report.map(|h| h.problems_at(now)) {
            Some(problems) if !problems.is_empty() => (AgentConnection::Degraded, problems),
            _ => (AgentConnection::Online, Vec::new()),
        }
    }
}

/// An agent's live connection; dropping it ends it.
#[derive(Debug)]
pub struct LiveGuard {
    presence: Presence,
    agent: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = self.presence.inner.live.lock()
            && let Some(n) = m.get_mut(&self.agent)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.agent);
            }
        }
        self.presence.inner.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_counted_per_controller() {
        let (a, b) = (Presence::new(), Presence::new());
        a.set_serving();
        let g1 = a.connected("x");
        let g2 = a.connected("x");
        assert!(a.is_live("x") && !b.is_live("x"));
        assert!(a.online("x", None, 0));
        drop(g1);
        assert!(a.is_live("x"), "the overlapping reconnect keeps it live");
        drop(g2);
        assert!(
            !a.online("x", Some(0), 1),
            "serving: only a live connection counts"
        );
        assert!(
            b.online("x", Some(0), 1),
            "not serving: a recent last_seen counts"
        );
        assert!(!b.online("x", Some(0), ONLINE_WITHIN_MS + 1));
        // Connected to another controller of the cluster, until the row's expiry.
        a.set_cluster([("y".to_string(), 100)].into());
        assert!(a.online("y", None, 99) && !a.online("y", None, 100));
        assert!(
            !a.is_live("y"),
            "not counted as this controller's connection"
        );
    }

    #[test]
    fn an_agent_is_shown_by_one_rule() {
        let p = Presence::new();
        let now = 1_000_000;
        let whole = Heartbeat {
            interfaces: vec!["eth0 (driver)".into()],
            status_reported: true,
            received_ms: Some(now),
            ..Heartbeat::default()
        };
        let shown = |status: AgentStatus, seen: i64, h: &Heartbeat| {
            p.shown("a", &status, Some(seen), Some(h), now)
        };
        assert_eq!(
            shown(AgentStatus::Active, now, &whole),
            (AgentConnection::Online, vec![])
        );
        let detached = Heartbeat {
            interfaces: vec![],
            ..whole.clone()
        };
        let (c, problems) = shown(AgentStatus::Active, now, &detached);
        assert_eq!(c, AgentConnection::Degraded);
        assert!(
            problems[0].starts_with("enforcement detached"),
            "{problems:?}"
        );
        // Offline and revoked say nothing of an old report's problems.
        assert_eq!(
            shown(AgentStatus::Active, now - ONLINE_WITHIN_MS - 1, &detached),
            (AgentConnection::Offline, vec![])
        );
        assert_eq!(
            shown(AgentStatus::Revoked, now, &detached),
            (AgentConnection::Revoked, vec![])
        );
    }
}
