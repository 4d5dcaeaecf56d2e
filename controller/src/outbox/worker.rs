//! The delivery worker: one task per controller (docs/notifications.md, "Delivery").
//!
//! Each round it
//! - fans out new events (in a write transaction: under the counters lock, so one
//!   controller at a time): one `queued` delivery per sink that wants the event;
//! - claims, per sink, as many due deliveries as the sink has free slots
//!   ([`PER_SINK`]), leased to this controller for the attempt's timeout plus a margin, the
//!   first pending one of each request only (per-request order);
//! - attempts each in a task of its own: a hanging sink holds its own slots and nothing
//!   else (no transaction, no lock, no request);
//! - records the outcomes that came in since the last round in one transaction, each
//!   fenced by its lease: delivered, or retrying at the backoff's time, or dead;
//! - prunes delivered rows older than the retention, hourly.
//!
//! It wakes when a commit of this controller wrote events, when an attempt ends, and every
//! second (events of other controllers, retries coming due); after a wakeup it lets
//! [`GATHER`] pass so that one round serves many commits and outcomes.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use jitgate_notify::event::Links;
use jitgate_notify::{
    DeliverError, Deliverer, DeliveryState, EmailAddress, Event, Next, NotifyConfig, Outcome,
    Person, RetryPolicy, SecretStore, Sink, SinkFormat, SinkRules, SinkSpec,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::error::{Result, SetupError};
use crate::notify::Notifier;
use crate::outbox::sender::Sender;
use crate::outbox::sinks;
use crate::store::db::Db;
use crate::store::notify::{self, Attempted, Claimed};
use crate::store::{sessions, tokens};

/// Most attempts in flight per sink (a hanging sink holds these and nothing else).
pub const PER_SINK: usize = 32;
/// After a wakeup, how long the worker lets more commits and outcomes gather before its
/// round: a round is a few write transactions, which the request path shares; gathering
/// keeps them to a few dozen a second however busy the controller is.
const GATHER: Duration = Duration::from_millis(10);
/// Most events fanned out per transaction.
const FANOUT_BATCH: i64 = 500;
/// How often the worker looks without being woken.
const POLL: Duration = Duration::from_secs(1);
/// How often delivered rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// A lease outlives the attempt's timeout by this much.
const LEASE_MARGIN: Duration = Duration::from_secs(30);

/// What the worker needs (built from `[notify]` at start).
#[derive(Clone)]
pub struct Outbox {
    pub db: Db,
    pub notifier: Notifier,
    /// None when no sink is configured and the host trusts no certificate authority (a
    /// minimal host without CA certificates): events are still fanned out (to no one) and
    /// pruned.
    pub deliverer: Option<Arc<Deliverer>>,
    pub secrets: SecretStore,
    pub rules: SinkRules,
    pub retry: RetryPolicy,
    pub portal: Option<url::Url>,
    /// One attempt's timeout (`notify.timeout_seconds`).
    pub timeout: Duration,
    pub retain: Duration,
    /// This controller's lease owner id.
    pub owner: String,
    /// Where attempts run: a thread at a lower CPU priority.
    pub sender: Sender,
}

/// The worker's parts from `[notify]`: the deliverer, the secrets directory
/// (`notify.secrets_dir`, default `notify-secrets` in the state directory), and the sinks of
/// controller.toml stored. Any error stops the start.
pub async fn setup(
    cfg: &NotifyConfig,
    default_secrets: &Path,
    db: &Db,
    notifier: &Notifier,
) -> std::result::Result<Outbox, SetupError> {
    let invalid = |e: &dyn std::fmt::Display| SetupError::Invalid(format!("[notify]: {e}"));
    let delivery = cfg.delivery_config().map_err(|e| invalid(&e))?;
    let timeout = delivery.timeout;
    let deliverer = match Deliverer::new(delivery) {
        Ok(d) => Some(Arc::new(d)),
        // Nothing to send to: a trust store is needed only once a sink is configured.
        Err(DeliverError::NoRoots) if cfg.sinks.is_empty() => {
            tracing::info!(
                "no notification sink and no trusted certificate authority: notifications are not sent"
            );
            None
        }
        Err(e) => return Err(invalid(&e)),
    };
    let dir = cfg
        .secrets_dir
        .clone()
        .unwrap_or_else(|| default_secrets.to_path_buf());
    let dir = std::path::absolute(&dir).map_err(|e| SetupError::io(dir.display(), e))?;
    let secrets = SecretStore::open(dir).map_err(|e| invalid(&e))?;
    let rules = cfg.sink_rules();
    sinks::sync(db, &cfg.sinks, &rules, &secrets)
        .await
        .map_err(|e| invalid(&e))?;
    Ok(Outbox {
        db: db.clone(),
        notifier: notifier.clone(),
        deliverer,
        secrets,
        rules,
        retry: cfg.retry_policy(),
        portal: cfg.portal().map_err(|e| invalid(&e))?,
        timeout,
        retain: Duration::from_secs(cfg.retain_delivered_days.saturating_mul(86_400)),
        owner: notifier.origin().to_string(),
        sender: Sender::start()?,
    })
}

/// Starts the worker; it stops (giving up its leases) when `shutdown` changes.
pub fn spawn(outbox: Outbox, mut shutdown: watch::Receiver<bool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut inflight = Inflight::new();
        let mut attempts: JoinSet<()> = JoinSet::new();
        let mut last_prune: Option<tokio::time::Instant> = None;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut done: Vec<Done> = Vec::new();
        loop {
            outbox.record(&mut done).await;
            if let Err(e) = outbox.round(&mut inflight, &mut attempts, &done_tx).await {
                tracing::warn!(error = %e, "notification round failed; retrying");
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY) {
                last_prune = Some(tokio::time::Instant::now());
                if let Err(e) = outbox.prune().await {
                    tracing::warn!(error = %e, "pruning delivered notifications failed");
                }
            }
            tokio::select! {
                _ = outbox.notifier.events() => {}
                Some(o) = done_rx.recv() => {
                    done.push(o);
                    while let Ok(o) = done_rx.try_recv() {
                        done.push(o);
                    }
                }
                Some(ended) = attempts.join_next(), if !attempts.is_empty() => {
                    finished(ended);
                    while let Some(ended) = attempts.try_join_next() {
                        finished(ended);
                    }
                }
                _ = tokio::time::sleep(POLL) => {}
                _ = shutdown.changed() => break,
            }
            tokio::select! {
                _ = tokio::time::sleep(GATHER) => {}
                _ = shutdown.changed() => break,
            }
            while let Ok(o) = done_rx.try_recv() {
                done.push(o);
            }
        }
        attempts.shutdown().await;
        while let Ok(o) = done_rx.try_recv() {
            done.push(o);
        }
        outbox.record(&mut done).await;
        match notify::release(outbox.db.writer(), &outbox.owner).await {
            Ok(n) if n > 0 => tracing::info!(released = n, "notification leases given up"),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "giving up notification leases failed"),
        }
    })
}

fn finished(done: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "a notification attempt panicked");
    }
}

/// Attempts in flight per sink.
type Inflight = HashMap<String, Arc<AtomicUsize>>;

/// One attempt's outcome, for the worker to record with the others that ended meanwhile
/// (one transaction for many: a busy sink does not cost a commit per delivery).
struct Done {
    sink: String,
    claimed: Claimed,
    attempted: Attempted,
}

/// One sink's slot, held by an attempt's task: given back when the task ends, however it
/// ends (done, panicked, aborted at stop).
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Outbox {
    /// The sinks as stored; one that no longer validates is skipped (and logged).
    async fn sinks(&self) -> Result<Vec<Sink>> {
        let mut conn = self.db.pool().acquire().await?;
        let rows = notify::sinks(&mut conn).await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let parsed = serde_json::from_str::<SinkSpec>(&r.spec)
                .map_err(|e| e.to_string())
                .and_then(|s| Sink::from_spec(&s, &self.rules).map_err(|e| e.to_string()));
            match parsed {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::error!(sink = %r.name, error = %e, "stored sink is invalid; skipped")
                }
            }
        }
        Ok(out)
    }

    /// Records the outcomes that came in (fenced by the lease, one transaction).
    async fn record(&self, done: &mut Vec<Done>) {
        if done.is_empty() {
            return;
        }
        let batch: Vec<(String, i64, Attempted)> = done
            .iter()
            .map(|o| (o.sink.clone(), o.claimed.event_seq, o.attempted.clone()))
            .collect();
        match notify::record_all(self.db.writer(), &self.owner, &batch).await {
            Ok(held) => {
                for (o, held) in done.iter().zip(held) {
                    if !held {
                        tracing::info!(
                            sink = %o.sink,
                            seq = o.claimed.event_seq,
                            "notification lease lost during the attempt; its outcome is not recorded"
                        );
                    } else if o.attempted.state == DeliveryState::Dead {
                        tracing::warn!(
                            sink = %o.sink,
                            seq = o.claimed.event_seq,
                            attempts = o.claimed.attempts,
                            kind = o.attempted.kind,
                            "notification given up (dead)"
                        );
                    }
                }
                done.clear();
            }
            // Kept for the next round; the leases outlive a short database outage.
            Err(e) => {
                tracing::warn!(error = %e, outcomes = done.len(), "recording notification outcomes failed")
            }
        }
    }

    async fn round(
        &self,
        inflight: &mut Inflight,
        attempts: &mut JoinSet<()>,
        done: &mpsc::UnboundedSender<Done>,
    ) -> Result<()> {
        let sinks = self.sinks().await?;
        self.fan_out(&sinks).await?;
        let now = jitgate_api::time::now_ms();
        let lease = i64::try_from((self.timeout + LEASE_MARGIN).as_millis()).unwrap_or(i64::MAX);
        for sink in sinks {
            let busy = inflight.entry(sink.name.clone()).or_default().clone();
            let free = PER_SINK.saturating_sub(busy.load(Ordering::Relaxed));
            if free == 0 {
                continue;
            }
            let claimed = notify::claim(
                self.db.writer(),
                &self.owner,
                &sink.name,
                now,
                now.saturating_add(lease),
                i64::try_from(free).unwrap_or(1),
            )
            .await?;
            if claimed.is_empty() {
                continue;
            }
            // The claimed events in one read; one gone meanwhile (pruned) is not attempted
            // and its lease expires.
            let mut events = self.load(&claimed).await?;
            let sink = Arc::new(sink);
            for c in claimed {
                let Some(event) = events.remove(&c.event_seq) else {
                    continue;
                };
                busy.fetch_add(1, Ordering::Relaxed);
                let slot = Slot(busy.clone());
                let (me, sink, done) = (self.clone(), sink.clone(), done.clone());
                attempts.spawn(async move {
                    let _slot = slot;
                    if let Some(o) = me.attempt(&sink, c, event).await {
                        // The worker is gone only at stop; the lease then expires.
                        let _ = done.send(o);
                    }
                });
            }
        }
        Ok(())
    }

    /// Queues a delivery of every new event to every sink that wants it.
    async fn fan_out(&self, sinks: &[Sink]) -> Result<()> {
        let any: Option<(i64,)> =
            sqlx::query_as("SELECT seq FROM notify_events WHERE fanned_out = 0 LIMIT 1")
                .fetch_optional(self.db.pool())
                .await?;
        if any.is_none() {
            return Ok(());
        }
        let mut w = self.db.begin().await?;
        let events = notify::unfanned(&mut w, FANOUT_BATCH).await?;
        let Some(upto) = events.last().map(|e| e.seq) else {
            return Ok(());
        };
        let mut to = Vec::new();
        for e in &events {
            let event: Event = match serde_json::from_str(&e.body) {
                Ok(ev) => ev,
                Err(err) => {
                    tracing::error!(seq = e.seq, error = %err, "stored event does not parse; not sent");
                    continue;
                }
            };
            for s in sinks.iter().filter(|s| s.wants(&event)) {
                to.push((e.seq, s.name.clone(), e.order_key.clone()));
            }
        }
        let queued = to.len();
        notify::fan_out(&mut w, to, upto).await?;
        w.commit().await?;
        tracing::debug!(events = events.len(), queued, "notifications fanned out");
        if events.len() as i64 == FANOUT_BATCH {
            self.notifier.events_committed();
        }
        Ok(())
    }

    /// One attempt of one claimed delivery: its outcome, to record (None: nothing was
    /// attempted; the lease expires and the delivery is taken again).
    async fn attempt(&self, sink: &Arc<Sink>, c: Claimed, event: Event) -> Option<Done> {
        let Some(deliverer) = &self.deliverer else {
            // A sink needs a trust store to be added, so this is a host that lost its CA
            // certificates: the lease expires and the row waits for a restart with them.
            tracing::warn!(sink = %sink.name, "no trusted certificate authority; notification not sent");
            return None;
        };
        let people = if sink.format == SinkFormat::Email {
            match self.people(&event).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(sink = %sink.name, seq = c.event_seq, error = %e, "looking up addresses failed");
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };
        let (deliverer, target, secrets) = (deliverer.clone(), sink.clone(), self.secrets.clone());
        let outcome = self
            .sender
            .run(async move {
                deliverer
                    .deliver(&target, &event, &secrets, &people, SystemTime::now())
                    .await
            })
            .await?;
        let now = jitgate_api::time::now_ms();
        let attempted = self.outcome(&outcome, &c, now);
        Some(Done {
            sink: sink.name.clone(),
            claimed: c,
            attempted,
        })
    }

    /// The addresses of the people the event concerns (its requester, or the approvers it
    /// waits for), read at delivery: `token:NAME` principals whose token carries an email,
    /// and `oidc:` principals by the address they last signed in with.
    async fn people(&self, event: &Event) -> Result<Vec<Person>> {
        let principals = event.people();
        let names: Vec<&str> = principals
            .iter()
            .filter_map(|p| p.id.strip_prefix("token:"))
            .collect();
        let people: Vec<&str> = principals
            .iter()
            .map(|p| p.id.as_str())
            .filter(|id| id.starts_with("oidc:"))
            .collect();
        let mut conn = self.db.pool().acquire().await?;
        let mut found: Vec<(String, String)> =
            tokens::emails(&mut conn, &names, jitgate_api::time::now_ms())
                .await?
                .into_iter()
                .map(|(name, email)| (format!("token:{name}"), email))
                .collect();
        found.extend(sessions::emails(&mut conn, &people).await?);
        let mut out: Vec<Person> = Vec::new();
        for (id, email) in found {
            let Ok(address) = email.parse::<EmailAddress>() else {
                continue;
            };
            if out.iter().any(|p| p.address == address) {
                continue;
            }
            let display_name = principals
                .iter()
                .find(|p| p.id == id)
                .and_then(|p| p.display_name.clone());
            out.push(Person {
                display_name,
                address,
            });
        }
        Ok(out)
    }

    /// The events of `claimed`, by seq, with their links as configured now.
    async fn load(&self, claimed: &[Claimed]) -> Result<HashMap<i64, Event>> {
        let seqs: Vec<i64> = claimed.iter().map(|c| c.event_seq).collect();
        let mut conn = self.db.pool().acquire().await?;
        let mut out = HashMap::with_capacity(seqs.len());
        for (seq, body) in notify::events(&mut conn, &seqs).await? {
            match serde_json::from_str::<Event>(&body) {
                Ok(mut event) => {
                    event.links = Links::for_details(&event.details, self.portal.as_ref());
                    out.insert(seq, event);
                }
                Err(e) => tracing::error!(seq, error = %e, "stored event does not parse; not sent"),
            }
        }
        Ok(out)
    }

    /// The row an outcome leaves.
    fn outcome(&self, outcome: &Outcome, c: &Claimed, now: i64) -> Attempted {
        match outcome {
            Outcome::Delivered { status } => Attempted {
                state: DeliveryState::Delivered,
                next_attempt_at: now,
                kind: outcome.kind_str(),
                status: Some(status.as_str()),
                detail: None,
                delivered_at: Some(now),
            },
            Outcome::Failed(f) => {
                let next = jitgate_notify::next_attempt(
                    &self.retry,
                    crate::outbox::event::time_of(c.first_attempt_at),
                    u32::try_from(c.attempts).unwrap_or(u32::MAX),
                    f,
                    crate::outbox::event::time_of(now),
                    rand::random::<f64>(),
                );
                let (state, at) = match next {
                    Next::RetryAt(t) => (
                        DeliveryState::Retrying,
                        i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX),
                    ),
                    Next::Dead => (DeliveryState::Dead, now),
                };
                Attempted {
                    state,
                    next_attempt_at: at,
                    kind: f.kind.as_str(),
                    status: f.status.map(|s| s.as_str()),
                    detail: Some(f.detail.chars().take(200).collect()),
                    delivered_at: None,
                }
            }
        }
    }

    /// Deletes delivered rows older than the retention (one controller at a time: the
    /// counters lock).
    async fn prune(&self) -> Result<()> {
        let retain = i64::try_from(self.retain.as_millis()).unwrap_or(i64::MAX);
        let before = jitgate_api::time::now_ms().saturating_sub(retain);
        let mut w = self.db.begin().await?;
        let (d, e) = notify::prune(&mut w, before).await?;
        w.commit().await?;
        if d + e > 0 {
            tracing::info!(deliveries = d, events = e, "delivered notifications pruned");
        }
        Ok(())
    }
}
