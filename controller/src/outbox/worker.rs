//! The delivery worker: one task per controller (docs/notifications.md, "Delivery"). Only
//! the leader (`lease`) fans out and claims; every controller records the outcomes of the
//! claims it made.
//!
//! Each round is one write transaction (one commit: the request path shares the writer) that
//! - records the outcomes that came in since the last round, each fenced by its lease:
//!   delivered, or retrying at the backoff's time, or dead (or, for a claim that was not
//!   attempted in time, the lease given back);
//! - clears the leases that expired (a controller stopped or stalled), found in an index of
//!   the leased deliveries by expiry: pending again, they are claimable like any other;
//! - claims, per sink, due deliveries up to [`AHEAD`] times the sink's [`PER_SINK`]
//!   attempts in flight, leased to this controller for the attempt's timeout plus a margin,
//!   the first pending one of each request only (per-request order), from an index of the
//!   pending deliveries no controller holds (a sink's claims in flight are not walked);
//! - fans out new events (under the counters lock, so one controller at a time): one
//!   delivery per sink that wants the event, written already claimed (as the claim leaves
//!   it) while the sink has room left and no earlier delivery of the same request to it is
//!   pending, `queued` otherwise: a delivery to a healthy sink costs no separate claim.
//!
//! Each claim becomes a task that waits for one of its sink's [`PER_SINK`] slots and then
//! attempts it: a healthy sink's next delivery starts as soon as one ends, without a round
//! in between; a hanging sink holds its own slots and nothing else (no transaction, no lock,
//! no request). A claim that could not start early enough to end within its lease is given
//! back instead (the next round), so a delivery is never attempted after its lease.
//! Delivered rows older than the retention are pruned hourly, by the leader, in short
//! transactions.
//!
//! The sinks are kept parsed between rounds and re-read only when a row's `updated_at`
//! changed (a cheap read in the round's transaction, so a sink added by any controller is
//! seen by the next fan-out).
//!
//! It wakes when a commit of this controller wrote events, when an attempt ends, and every
//! second (events of other controllers, retries coming due); after a wakeup it lets
//! [`GATHER`] pass so that one round serves many commits and outcomes. A round with no
//! outcome to record first reads whether anything waits, so an idle worker writes nothing.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jitgate_notify::{
    DeliverError, Deliverer, DeliveryState, Event, NotifyConfig, RetryPolicy, SecretStore, Sink,
    SinkRules, SinkSpec,
};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::lease::Leader;
use tokio::task::JoinSet;

use crate::error::{Result, SetupError};
use crate::notify::Notifier;
use crate::outbox::sender::Sender;
use crate::outbox::sinks;
use crate::store::db::Db;
use crate::store::notify::{self, Attempted, Claimed, SinkRow};
use crate::store::write::WriteTx;

mod attempt;

/// Most attempts in flight per sink (a hanging sink holds these and nothing else).
pub const PER_SINK: usize = 32;
/// Claims per sink may run this many times ahead of its attempts in flight: a healthy
/// sink's next delivery starts when one ends, not at the next round.
pub const AHEAD: usize = 16;
/// A claim waiting for a slot starts only if its attempt, bounded by the timeout (plus a
/// little the HTTP layer adds), would end this long before its lease does.
const START_SLACK: Duration = Duration::from_secs(2);
/// After a wakeup (the first after a quiet spell), how long the worker lets more commits
/// and outcomes gather before its round ([`ROUND_EVERY`] spaces the rounds that follow).
const GATHER: Duration = Duration::from_millis(10);
/// Most events fanned out per round.
const FANOUT_BATCH: i64 = 1000;
/// Rounds (write transactions) start at least this far apart while work keeps coming: the
/// request path shares the writer; up to [`AHEAD`] x [`PER_SINK`] claims per sink and
/// round keep a healthy sink busy in between.
const ROUND_EVERY: Duration = Duration::from_millis(200);
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
pub fn spawn(
    outbox: Outbox,
    leader: Leader,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let outbox = Arc::new(outbox);
        let mut rounds = Rounds::default();
        let mut attempts: JoinSet<()> = JoinSet::new();
        let mut last_prune: Option<tokio::time::Instant> = None;
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut done: Vec<Done> = Vec::new();
        loop {
            // The leader fans out and claims, fenced by its lease; any controller records
            // the outcomes of the claims it made (each fenced by its own delivery lease).
            let round = match leader.fence() {
                Some(fence) => {
                    let round = outbox.round(&mut rounds, &mut done, &mut attempts, &done_tx, true);
                    crate::store::lease::fenced(fence, round).await
                }
                None => {
                    outbox
                        .round(&mut rounds, &mut done, &mut attempts, &done_tx, false)
                        .await
                }
            };
            if let Err(e) = round {
                tracing::warn!(error = %e, outcomes = done.len(), "notification round failed; retrying");
            }
            if last_prune.is_none_or(|t| t.elapsed() >= PRUNE_EVERY)
                && let Some(pruned) = leader.run(outbox.prune()).await
            {
                last_prune = Some(tokio::time::Instant::now());
                if let Err(e) = pruned {
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
            let pause = rounds.last.map_or(GATHER, |t| {
                GATHER.max(ROUND_EVERY.saturating_sub(t.elapsed()))
            });
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
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
        if let Err(e) = outbox.record_only(&mut done).await {
            tracing::warn!(error = %e, outcomes = done.len(), "recording notification outcomes failed");
        }
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

/// What the worker keeps between rounds.
#[derive(Default)]
struct Rounds {
    /// The sinks as last read, with the `updated_at` each was parsed at.
    sinks: Vec<(i64, Arc<Sink>)>,
    /// Per sink: its claims not ended, and its slots for attempts in flight.
    slots: HashMap<String, Slots>,
    /// When the last round's transaction ran, and whether its fan-out left events behind.
    last: Option<tokio::time::Instant>,
    more: bool,
}

impl Rounds {
    /// Whether a round could claim anything now: some sink has room for more claims.
    fn room(&self) -> bool {
        self.sinks.iter().any(|(_, s)| {
            self.slots
                .get(&s.name)
                .is_none_or(|sl| sl.claimed.load(Ordering::Relaxed) < PER_SINK * AHEAD)
        })
    }
}

#[derive(Clone)]
struct Slots {
    /// Claims whose task has not ended (waiting for a slot, or attempting).
    claimed: Arc<AtomicUsize>,
    /// [`PER_SINK`] permits: one per attempt in flight.
    flight: Arc<Semaphore>,
}

impl Default for Slots {
    fn default() -> Self {
        Slots {
            claimed: Arc::new(AtomicUsize::new(0)),
            flight: Arc::new(Semaphore::new(PER_SINK)),
        }
    }
}

/// One claim's outcome, for the worker to record with the others that ended meanwhile
/// (one transaction for many: a busy sink does not cost a commit per delivery). No outcome:
/// the claim was not attempted (it could not start in time), its lease is given back.
struct Done {
    sink: String,
    claimed: Claimed,
    attempted: Option<Attempted>,
}

/// One claim, held by its task: counted until the task ends, however it ends (done,
/// panicked, aborted at stop).
struct Claim(Arc<AtomicUsize>);

impl Drop for Claim {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Outbox {
    /// The sinks as stored, parsed again only when a row changed; one that no longer
    /// validates is skipped (and logged).
    async fn sinks(&self, w: &mut WriteTx, kept: &mut Vec<(i64, Arc<Sink>)>) -> Result<()> {
        let versions = notify::sink_versions(w.conn()).await?;
        let same = versions.len() == kept.len()
            && versions
                .iter()
                .zip(kept.iter())
                .all(|((name, at), (kept_at, s))| *name == s.name && at == kept_at);
        if same {
            return Ok(());
        }
        let rows = notify::sinks(w.conn()).await?;
        kept.clear();
        for r in rows {
            if let Some(s) = self.parse_sink(&r) {
                kept.push((r.updated_at, Arc::new(s)));
            }
        }
        Ok(())
    }

    fn parse_sink(&self, r: &SinkRow) -> Option<Sink> {
        let parsed = serde_json::from_str::<SinkSpec>(&r.spec)
            .map_err(|e| e.to_string())
            .and_then(|s| Sink::from_spec(&s, &self.rules).map_err(|e| e.to_string()));
        match parsed {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(sink = %r.name, error = %e, "stored sink is invalid; skipped");
                None
            }
        }
    }

    /// The outcomes of `done` as stored rows, each with the lease it was claimed under.
    fn batch(done: &[Done]) -> Vec<notify::Ended> {
        done.iter()
            .map(|o| notify::Ended {
                sink: o.sink.clone(),
                event_seq: o.claimed.event_seq,
                lease_until: o.claimed.lease_until,
                attempted: o.attempted.clone(),
            })
            .collect()
    }

    /// After the outcomes were committed: logs what became of them and forgets them.
    fn recorded(done: &mut Vec<Done>, held: Vec<bool>) {
        for (o, held) in done.iter().zip(held) {
            match &o.attempted {
                _ if !held => tracing::info!(
                    sink = %o.sink,
                    seq = o.claimed.event_seq,
                    "notification lease lost during the attempt; its outcome is not recorded"
                ),
                Some(a) if a.state == DeliveryState::Dead => tracing::warn!(
                    sink = %o.sink,
                    seq = o.claimed.event_seq,
                    attempts = o.claimed.attempts,
                    kind = a.kind,
                    "notification given up (dead)"
                ),
                None => tracing::debug!(
                    sink = %o.sink,
                    seq = o.claimed.event_seq,
                    "notification claim not started within its lease; given back"
                ),
                Some(_) => {}
            }
        }
        done.clear();
    }

    /// Records the outcomes of `done` in a transaction of their own (at stop).
    async fn record_only(&self, done: &mut Vec<Done>) -> Result<()> {
        if done.is_empty() {
            return Ok(());
        }
        let mut w = self.db.begin().await?;
        let held = notify::record_all(&mut w, &self.owner, &Self::batch(done)).await?;
        w.commit().await?;
        Self::recorded(done, held);
        Ok(())
    }

    /// One round (see the module documentation). On an error nothing of it is stored: the
    /// outcomes stay in `done` for the next round; the leases outlive a short outage.
    async fn round(
        self: &Arc<Self>,
        rounds: &mut Rounds,
        done: &mut Vec<Done>,
        attempts: &mut JoinSet<()>,
        done_tx: &mpsc::UnboundedSender<Done>,
        lead: bool,
    ) -> Result<()> {
        if !lead && done.is_empty() {
            return Ok(());
        }
        if done.is_empty() {
            // Every sink's claims are taken (a hanging sink, or none at all): fanning out
            // can wait for the next poll, so such a sink costs no write per commit.
            if !rounds.room() && !rounds.more && rounds.last.is_some_and(|t| t.elapsed() < POLL) {
                return Ok(());
            }
            let mut conn = self.db.pool().acquire().await?;
            if !notify::work_waiting(&mut conn, jitgate_api::time::now_ms()).await? {
                return Ok(());
            }
        }
        let started = tokio::time::Instant::now();
        let mut w = self.db.begin().await?;
        let began = started.elapsed();
        let held = notify::record_all(&mut w, &self.owner, &Self::batch(done)).await?;
        let recorded_at = started.elapsed();
        self.sinks(&mut w, &mut rounds.sinks).await?;
        let now = w.now;
        let lease = i64::try_from((self.timeout + LEASE_MARGIN).as_millis()).unwrap_or(i64::MAX);
        let lease_until = now.saturating_add(lease);
        // Leases that expired are cleared (their deliveries are pending again), deliveries
        // waiting already are claimed (oldest first), then new events are fanned out, each
        // delivery claimed as it is written while its sink has room.
        let reclaimed = if lead {
            notify::reclaim(&mut w, now).await?
        } else {
            0
        };
        if reclaimed > 0 {
            tracing::info!(
                reclaimed,
                "notification leases expired; deliveries taken again"
            );
        }
        let mut claims: Vec<(Arc<Sink>, Slots, Vec<Claimed>)> = Vec::new();
        let mut room: HashMap<String, usize> = HashMap::new();
        for (_, sink) in &rounds.sinks {
            let slots = rounds.slots.entry(sink.name.clone()).or_default().clone();
            let free = (PER_SINK * AHEAD).saturating_sub(slots.claimed.load(Ordering::Relaxed));
            if free == 0 || !lead {
                continue;
            }
            let claimed = notify::claim(
                &mut w,
                &self.owner,
                &sink.name,
                now,
                lease_until,
                i64::try_from(free).unwrap_or(1),
            )
            .await?;
            room.insert(sink.name.clone(), free.saturating_sub(claimed.len()));
            claims.push((sink.clone(), slots, claimed));
        }
        let claimed_at = started.elapsed();
        // A controller that no longer leads only records the outcomes of its own claims.
        let (mut events, more) = if lead {
            let (events, more, fanned) = self
                .fan_out(&mut w, &rounds.sinks, &mut room, lease_until)
                .await?;
            for (name, c) in fanned {
                if let Some((_, _, list)) = claims.iter_mut().find(|(s, _, _)| s.name == name) {
                    list.push(c);
                }
            }
            (events, more)
        } else {
            (HashMap::new(), false)
        };
        claims.retain(|(_, _, c)| !c.is_empty());
        let fanned_at = started.elapsed();
        w.commit().await?;
        // How long the round waited for the writer, then held it (the request path waits
        // meanwhile), step by step.
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            wait_ms = ms(began),
            record_ms = ms(recorded_at - began),
            claim_ms = ms(claimed_at - recorded_at),
            fan_out_ms = ms(fanned_at - claimed_at),
            commit_ms = ms(started.elapsed() - fanned_at),
            recorded = done.len(),
            reclaimed,
            claimed = claims.iter().map(|(_, _, c)| c.len()).sum::<usize>(),
            "notification round committed"
        );
        rounds.last = Some(tokio::time::Instant::now());
        rounds.more = more;
        Self::recorded(done, held);
        rounds
            .slots
            .retain(|name, _| rounds.sinks.iter().any(|(_, s)| s.name == *name));
        // The claimed events not fanned out in this round, in one read; one gone meanwhile
        // (pruned) is not attempted and its lease expires.
        let missing: Vec<i64> = claims
            .iter()
            .flat_map(|(_, _, c)| c.iter().map(|c| c.event_seq))
            .filter(|seq| !events.contains_key(seq))
            .collect();
        if !missing.is_empty() {
            events.extend(self.load(&missing).await?);
        }
        for (sink, slots, claimed) in claims {
            for c in claimed {
                // One event may go to several sinks.
                let Some(body) = events.get(&c.event_seq).cloned() else {
                    continue;
                };
                slots.claimed.fetch_add(1, Ordering::Relaxed);
                let claim = Claim(slots.claimed.clone());
                let (me, sink, flight, done) = (
                    self.clone(),
                    sink.clone(),
                    slots.flight.clone(),
                    done_tx.clone(),
                );
                attempts.spawn(async move {
                    let _claim = claim;
                    let o = me.start(&sink, &flight, c, lease_until, body).await;
                    if let Some(o) = o {
                        // The worker is gone only at stop; the lease then expires.
                        let _ = done.send(o);
                    }
                });
            }
        }
        Ok(())
    }

    /// Waits for one of the sink's slots, then attempts the claim if it can end within its
    /// lease, or gives it back.
    async fn start(
        &self,
        sink: &Arc<Sink>,
        flight: &Semaphore,
        c: Claimed,
        lease_until: i64,
        body: Arc<str>,
    ) -> Option<Done> {
        // The semaphore is never closed.
        let _permit = flight.acquire().await.ok()?;
        let latest = i64::try_from((self.timeout + START_SLACK).as_millis()).unwrap_or(i64::MAX);
        if jitgate_api::time::now_ms().saturating_add(latest) > lease_until {
            return Some(Done {
                sink: sink.name.clone(),
                claimed: c,
                attempted: None,
            });
        }
        self.attempt(sink, c, body).await
    }

    /// Writes a delivery of every new event to every sink that wants it: claimed at once
    /// (for this controller, until `lease_until`) while its sink has `room` (claims it may
    /// still take) and no earlier delivery of the same order key to it is pending, queued
    /// otherwise. Returns the bodies of the events written (by seq), so that those claimed
    /// in this round are not read again, whether more events wait, and the claims written
    /// (by sink name). An event is parsed here only if some sink chooses by type, scope or
    /// group; delivery parses it on the sending thread.
    async fn fan_out(
        &self,
        w: &mut WriteTx,
        sinks: &[(i64, Arc<Sink>)],
        room: &mut HashMap<String, usize>,
        lease_until: i64,
    ) -> Result<(HashMap<i64, Arc<str>>, bool, Vec<(String, Claimed)>)> {
        let started = tokio::time::Instant::now();
        let events = notify::unfanned(w, FANOUT_BATCH).await?;
        let read_at = started.elapsed();
        let Some(upto) = events.last().map(|e| e.seq) else {
            return Ok((HashMap::new(), false, Vec::new()));
        };
        let choosy = sinks.iter().any(|(_, s)| !s.wants_every_event());
        let mut to: Vec<(i64, &str, &str)> = Vec::new();
        let mut read = HashMap::with_capacity(events.len());
        for e in events.iter() {
            let before = to.len();
            if choosy {
                let event: Event = match serde_json::from_str(&e.body) {
                    Ok(ev) => ev,
                    Err(err) => {
                        tracing::error!(seq = e.seq, error = %err, "stored event does not parse; not sent");
                        continue;
                    }
                };
                for (_, s) in sinks.iter().filter(|(_, s)| s.wants(&event)) {
                    to.push((e.seq, s.name.as_str(), e.order_key.as_str()));
                }
            } else {
                for (_, s) in sinks {
                    to.push((e.seq, s.name.as_str(), e.order_key.as_str()));
                }
            }
            if to.len() > before {
                read.insert(e.seq, Arc::<str>::from(e.body.as_str()));
            }
        }
        let matched_at = started.elapsed();
        // Per sink with room: the order keys that already have a pending delivery to it
        // (one read per sink); a key's later events in this batch wait for its first.
        let mut waiting: HashSet<(&str, &str)> = HashSet::new();
        for (_, sink) in sinks {
            let name = sink.name.as_str();
            if room.get(name).is_none_or(|f| *f == 0) {
                continue;
            }
            let mut keys: Vec<&str> = to
                .iter()
                .filter(|(_, s, _)| *s == name)
                .map(|(_, _, k)| *k)
                .collect();
            keys.sort_unstable();
            keys.dedup();
            if keys.is_empty() {
                continue;
            }
            let pending = notify::pending_keys(w, name, &keys).await?;
            waiting.extend(
                keys.into_iter()
                    .filter(|k| pending.contains(*k))
                    .map(|k| (name, k)),
            );
        }
        let mut fanned = Vec::with_capacity(to.len());
        let mut claimed = 0usize;
        for (seq, sink, key) in &to {
            // Claimed when the sink has room and no delivery of the key to it is pending
            // (stored, or written just before in this batch); every later one waits.
            let first = waiting.insert((*sink, *key));
            let take = match room.get_mut(*sink) {
                Some(free) if first && *free > 0 => {
                    *free -= 1;
                    claimed += 1;
                    true
                }
                _ => false,
            };
            fanned.push(notify::Fanned {
                event_seq: *seq,
                sink: sink.to_string(),
                order_key: key.to_string(),
                claimed: take,
            });
        }
        let queued = to.len() - claimed;
        let keys_at = started.elapsed();
        let claims = notify::fan_out(w, fanned, upto, &self.owner, lease_until).await?;
        // The fan-out's time step by step: reading the events, choosing the sinks (events
        // are parsed only for a sink that chooses), the pending order keys, the writes.
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        tracing::debug!(
            events = events.len(),
            queued,
            claimed,
            read_ms = ms(read_at),
            match_ms = ms(matched_at - read_at),
            keys_ms = ms(keys_at - matched_at),
            write_ms = ms(started.elapsed() - keys_at),
            "notifications fanned out"
        );
        let more = events.len() as i64 == FANOUT_BATCH;
        if more {
            self.notifier.events_committed();
        }
        Ok((read, more, claims))
    }

    /// The bodies of the events `seqs`, by seq.
    async fn load(&self, seqs: &[i64]) -> Result<HashMap<i64, Arc<str>>> {
        let mut conn = self.db.pool().acquire().await?;
        Ok(notify::events(&mut conn, seqs)
            .await?
            .into_iter()
            .map(|(seq, body)| (seq, Arc::<str>::from(body)))
            .collect())
    }

    /// Deletes delivered rows older than the retention (one controller at a time: the
    /// counters lock).
    /// Leader work: short transactions (`notify::prune_all`).
    async fn prune(&self) -> Result<()> {
        let retain = i64::try_from(self.retain.as_millis()).unwrap_or(i64::MAX);
        let before = jitgate_api::time::now_ms().saturating_sub(retain);
        let (d, e) = notify::prune_all(&self.db, before).await?;
        if d + e > 0 {
            tracing::info!(deliveries = d, events = e, "delivered notifications pruned");
        }
        Ok(())
    }
}
