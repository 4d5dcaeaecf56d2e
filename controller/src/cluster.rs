//! Several controllers on one PostgreSQL, acting as one for the agent channel (docs/ha.md).
//!
//! - Push: every write transaction that touched VMs sends a `NOTIFY` naming them
//!   (`store::write`); [`listen`] receives the other controllers' notices and wakes this
//!   controller's connections of those VMs, as a local commit would.
//! - Catch-up: push is a hint. Every [`CATCH_UP_EVERY`] [`catch_up`] compares the committed
//!   outbox and activity heads with what it last saw and wakes the VMs with outbox rows,
//!   policy changes or agent revocations in between, so a lost notification (a listener reconnecting, a full
//!   queue, a bug) delays a delivery, never loses it. It also samples
//!   `pg_notification_queue_usage()`.
//! - Presence: every [`PRESENCE_EVERY`] (and soon after a connection begins or ends)
//!   [`presence`] writes this controller's connected agents with an expiry (each row every 6 s)
//!   and reads back everyone's, so any controller lists agents connected to any other.
//!
//! Nothing here runs on SQLite (one controller).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::notify::{CHANNEL, Notice, Notifier, Touched};
use crate::presence::Presence;
use crate::store::Db;
use crate::store::cluster::{self as sql, Change};

/// How often each controller looks for committed work it was not told about.
pub const CATCH_UP_EVERY: Duration = Duration::from_secs(2);
/// How often each controller writes its agents' presence.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(3);
/// How long a presence row holds without renewal (a controller that died stops renewing).
pub const PRESENCE_TTL_MS: i64 = 15_000;
/// How old this controller's row of a connected agent may be before it is written again:
/// well inside [`PRESENCE_TTL_MS`] with a refresh every [`PRESENCE_EVERY`], and about half
/// the writes of renewing every row at every refresh (10 000 rows every 3 s at 10 000
/// agents was most of PostgreSQL's idle work).
const RENEW_AFTER_MS: i64 = 6_000;
/// Least time between two presence writes (a burst of connections makes one write).
const PRESENCE_MIN_GAP: Duration = Duration::from_millis(500);
/// Wait before connecting the listener again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);
/// A notification queue fuller than this is logged as a warning.
const QUEUE_WARN: f64 = 0.5;
/// Above this, commits stop notifying (a notifying commit fails when the queue is full) and
/// other controllers rely on the catch-up until it drains below [`QUEUE_WARN`].
const QUEUE_STOP: f64 = 0.9;

/// What this controller knows about the cluster, for status and metrics. Clones share it.
#[derive(Clone, Debug)]
pub struct ClusterStatus {
    /// `pg_notification_queue_usage()` as last sampled (f64 bits; `u64::MAX`: never).
    queue_usage: Arc<AtomicU64>,
    /// Other controllers' notices applied.
    notices: Arc<AtomicU64>,
    /// Catch-up rounds completed.
    catch_ups: Arc<AtomicU64>,
}

impl Default for ClusterStatus {
    fn default() -> Self {
        ClusterStatus {
            queue_usage: Arc::new(AtomicU64::new(u64::MAX)),
            notices: Arc::new(AtomicU64::new(0)),
            catch_ups: Arc::new(AtomicU64::new(0)),
        }
    }
}

impl ClusterStatus {
    /// The fraction of PostgreSQL's notification queue in use, as last sampled (every
    /// [`CATCH_UP_EVERY`]); `None` on SQLite or before the first sample.
    pub fn notification_queue_usage(&self) -> Option<f64> {
        match self.queue_usage.load(Ordering::Relaxed) {
            u64::MAX => None,
            b => Some(f64::from_bits(b)),
        }
    }

    /// How many notices of other controllers' commits this controller has applied.
    pub fn notices_applied(&self) -> u64 {
        self.notices.load(Ordering::Relaxed)
    }

    /// How many catch-up rounds have completed. Once it has grown by two, every commit made
    /// before the first of them has been caught up (and any late wake it causes is done).
    pub fn catch_ups_completed(&self) -> u64 {
        self.catch_ups.load(Ordering::Relaxed)
    }

    fn set_queue_usage(&self, u: f64) {
        self.queue_usage.store(u.to_bits(), Ordering::Relaxed);
    }
}

/// What the cluster tasks work with.
#[derive(Clone)]
pub struct Parts {
    pub db: Db,
    /// The PostgreSQL URL (the listener has a connection of its own).
    pub url: String,
    pub notifier: Notifier,
    pub presence: Presence,
    pub status: ClusterStatus,
}

/// Starts the listener, the catch-up and the presence tasks; they end when `shutdown` turns
/// true.
pub fn spawn(parts: Parts, shutdown: &watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
    vec![
        tokio::spawn(listen(
            parts.url.clone(),
            parts.notifier.clone(),
            parts.status.clone(),
            shutdown.clone(),
        )),
        tokio::spawn(catch_up(parts.clone(), shutdown.clone())),
        tokio::spawn(presence(parts, shutdown.clone())),
    ]
}

/// Applies one notice from the channel.
fn on_notice(notifier: &Notifier, status: &ClusterStatus, payload: &str) {
    match serde_json::from_str::<Notice>(payload) {
        Ok(n) if n.from == notifier.origin() => {} // woken at commit already
        Ok(n) => {
            let woken = notifier.wake(&n.touched);
            status.notices.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(from = %n.from, woken, "woken by another controller's commit");
        }
        Err(e) => {
            tracing::warn!(error = %e, len = payload.len(), "unreadable notification; waking every connection");
            notifier.wake(&Touched::everything());
        }
    }
}

/// Receives the other controllers' notices until shutdown, connecting again after any
/// failure. Each reconnection wakes every connection: whatever was committed while not
/// listening is read then (before the first connection, the catch-up covers).
async fn listen(
    url: String,
    notifier: Notifier,
    status: ClusterStatus,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut first = true;
    loop {
        let connected = async {
            let mut l = PgListener::connect(&url).await?;
            l.listen(CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut l = tokio::select! {
            r = connected => match r {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for other controllers' commits; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(RECONNECT_AFTER) => continue,
                        _ = shutdown.changed() => return,
                    }
                }
            },
            _ = shutdown.changed() => return,
        };
        tracing::info!(
            channel = CHANNEL,
            "listening for other controllers' commits"
        );
        if !first {
            notifier.wake(&Touched::everything());
        }
        first = false;
        loop {
            tokio::select! {
                r = l.try_recv() => match r {
                    Ok(Some(n)) => on_notice(&notifier, &status, n.payload()),
                    Ok(None) => {
                        // The connection was lost; the next call connects again.
                        tracing::warn!("listener connection lost; reconnecting");
                        notifier.wake(&Touched::everything());
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "listener failed; reconnecting");
                        break;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RECONNECT_AFTER) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Heads seen by the catch-up: (activity seq, outbox seq).
async fn catch_up(p: Parts, mut shutdown: watch::Receiver<bool>) {
    let mut seen: Option<(i64, i64)> = None;
    let mut tick = tokio::time::interval(CATCH_UP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match catch_up_once(&p, seen).await {
            Ok(h) => {
                seen = Some(h);
                p.status.catch_ups.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => tracing::warn!(error = %e, "catch-up failed; retrying"),
        }
        match sql::notification_queue_usage(p.db.pool()).await {
            Ok(u) => {
                p.status.set_queue_usage(u);
                if u > QUEUE_WARN {
                    tracing::warn!(
                        usage = u,
                        "PostgreSQL's notification queue is filling: a listener is stalled"
                    );
                }
                queue_guard(&p.notifier, u);
            }
            Err(e) => tracing::warn!(error = %e, "reading the notification queue usage failed"),
        }
    }
}

/// Stops notifying above [`QUEUE_STOP`], starts again below [`QUEUE_WARN`].
fn queue_guard(notifier: &Notifier, usage: f64) {
    if usage > QUEUE_STOP && notifier.set_push(false) {
        tracing::error!(
            usage,
            "notification queue nearly full: commits stop notifying; other controllers deliver by catch-up"
        );
    } else if usage < QUEUE_WARN && !notifier.set_push(true) {
        tracing::info!(usage, "notification queue drained: commits notify again");
    }
}

/// Wakes the connections of the VMs with work committed since `seen` (nothing the first
/// time: connections read everything when they connect); returns the new heads.
async fn catch_up_once(p: &Parts, seen: Option<(i64, i64)>) -> crate::error::Result<(i64, i64)> {
    let (chain, outbox) = sql::heads(p.db.pool()).await?;
    let Some((seen_chain, seen_outbox)) = seen else {
        return Ok((chain, outbox));
    };
    let mut t = Touched::default();
    if outbox > seen_outbox {
        t.outbox = sql::outbox_vms(p.db.pool(), seen_outbox, outbox)
            .await?
            .into_iter()
            .collect();
    }
    if chain > seen_chain {
        for c in sql::changes(p.db.pool(), seen_chain, chain).await? {
            match c {
                Change::VmPolicy(vm) => t.policy_vms.insert(vm),
                Change::GroupPolicy(g) => t.policy_groups.insert(g),
                Change::Agents(vm) => t.agents.insert(vm),
            };
        }
    }
    if !t.is_empty() {
        let woken = p.notifier.wake(&t);
        tracing::debug!(
            outbox_vms = t.outbox.len(),
            policy_vms = t.policy_vms.len(),
            policy_groups = t.policy_groups.len(),
            agents = t.agents.len(),
            woken,
            "catch-up"
        );
    }
    Ok((chain, outbox))
}

/// Reads the cluster's presence once (administration commands on PostgreSQL, which list
/// agents without serving them).
pub async fn read_presence(db: &Db, presence: &Presence) -> crate::error::Result<()> {
    let now = jitgate_api::time::now_ms();
    presence.set_cluster(sql::present(db.pool(), now).await?);
    Ok(())
}

/// Writes this controller's agents' presence and reads the cluster's, every
/// [`PRESENCE_EVERY`] and soon after a connection begins or ends; removes this
/// controller's rows at shutdown.
async fn presence(p: Parts, mut shutdown: watch::Receiver<bool>) {
    let me = p.notifier.origin().to_string();
    let mut tick = tokio::time::interval(PRESENCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // This controller's rows as it last wrote them: agent → when.
    let mut written: HashMap<String, i64> = HashMap::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = p.presence.changed() => {}
            _ = shutdown.changed() => break,
        }
        let now = jitgate_api::time::now_ms();
        let live = p.presence.live_agents();
        let (renew, gone) = presence_work(&written, &live, now);
        let r = async {
            sql::refresh_presence(p.db.pool(), &me, &renew, &gone, now, now + PRESENCE_TTL_MS)
                .await?;
            sql::present(p.db.pool(), now).await
        }
        .await;
        match r {
            Ok(present) => {
                for a in gone.iter() {
                    written.remove(a);
                }
                for a in renew.iter() {
                    written.insert(a.clone(), now);
                }
                // A row another controller took or removed (the agent came back here from
                // it) is written again at the next refresh.
                written.retain(|a, _| present.contains_key(a));
                tracing::trace!(
                    live = live.len(),
                    renewed = renew.len(),
                    gone = gone.len(),
                    cluster = present.len(),
                    "presence refreshed"
                );
                p.presence.set_cluster(present);
            }
            Err(e) => tracing::warn!(error = %e, live = live.len(), "presence refresh failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(PRESENCE_MIN_GAP) => {}
            _ = shutdown.changed() => break,
        }
    }
    if let Err(e) = sql::clear_presence(p.db.pool(), &me).await {
        tracing::warn!(error = %e, "removing this controller's presence rows failed");
    }
}

/// Which connected agents' rows to write now (none yet, or older than [`RENEW_AFTER_MS`]) and
/// which rows to remove (written by this controller, the agent no longer connected here).
fn presence_work(
    written: &HashMap<String, i64>,
    live: &[String],
    now: i64,
) -> (Vec<String>, Vec<String>) {
    let renew = live
        .iter()
        .filter(|a| written.get(*a).is_none_or(|t| now - t >= RENEW_AFTER_MS))
        .cloned()
        .collect();
    let live: HashSet<&str> = live.iter().map(String::as_str).collect();
    let mut gone: Vec<String> = written
        .keys()
        .filter(|a| !live.contains(a.as_str()))
        .cloned()
        .collect();
    gone.sort();
    (renew, gone)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_writes_new_and_old_rows_and_removes_departed_ones() {
        let live: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let written: HashMap<String, i64> = [("a", 10_000), ("b", 4_000), ("gone", 9_000)]
            .map(|(a, t)| (a.to_string(), t))
            .into_iter()
            .collect();
        let (renew, gone) = presence_work(&written, &live, 10_000 + RENEW_AFTER_MS - 1);
        // b is older than the renewal age, c was never written, a is fresh.
        let mut renew = renew;
        renew.sort();
        assert_eq!(renew, ["b", "c"]);
        assert_eq!(gone, ["gone"]);
        let (renew, _) = presence_work(&written, &live, 10_000 + RENEW_AFTER_MS);
        assert_eq!(renew.len(), 3);
    }

    #[test]
    fn notices_wake_only_for_other_controllers_and_bad_ones_wake_everyone() {
        let (n, st) = (Notifier::new(), ClusterStatus::default());
        let s = n.subscribe("web1", "prod");
        let t = Touched {
            outbox: ["web1".to_string()].into(),
            ..Touched::default()
        };
        on_notice(&n, &st, &Notice::payload(n.origin(), &t).expect("payload"));
        assert!(!s.pending().any(), "its own notice was applied at commit");
        assert_eq!(st.notices_applied(), 0);
        on_notice(&n, &st, &Notice::payload("other", &t).expect("payload"));
        assert!(s.pending().outbox && !s.pending().policy);
        assert_eq!(st.notices_applied(), 1);
        let other = n.subscribe("db1", "data");
        on_notice(&n, &st, "not json");
        assert!(other.pending().outbox && other.pending().policy);
    }

    #[test]
    fn a_full_queue_stops_notifying_until_it_drains() {
        let n = Notifier::new();
        queue_guard(&n, 0.6);
        assert!(n.push(), "a filling queue only warns");
        queue_guard(&n, 0.95);
        assert!(!n.push());
        queue_guard(&n, 0.7);
        assert!(!n.push(), "still above the warning level");
        queue_guard(&n, 0.1);
        assert!(n.push());
    }

    #[test]
    fn queue_usage_is_unknown_until_sampled() {
        let s = ClusterStatus::default();
        assert_eq!(s.notification_queue_usage(), None);
        s.clone().set_queue_usage(0.25);
        assert_eq!(s.notification_queue_usage(), Some(0.25));
    }
}
