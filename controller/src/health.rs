//! Is this controller alive and ready, and what do its sampled metrics say: the readiness
//! check behind `/readyz` (the database answers within [`READY_TIMEOUT`] and its schema is
//! this binary's), the periodic database probe, the scrape-time [`sample`] of stored state,
//! and the certificates' expiry. Nothing here names an HTTP status (`http::ops` does).

use std::time::{Duration, Instant};

use jitgate_api::{AgentConnection, AgentStatus};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::App;
use crate::error::{Error, Result};
use crate::lease::LeaderStatus;
use crate::metrics::{
    AgentCounts, CertExpiry, CertKind, CheckpointSample, Metrics, PendingGrants, Sample,
};
use crate::store::Db;
use crate::store::db::SCHEMA_VERSION;
use crate::store::{agents, cluster, health as sql};

/// How long the readiness check waits for the database.
pub const READY_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the database is probed for the latency histogram and error counter.
pub const PROBE_EVERY: Duration = Duration::from_secs(5);
/// How long a scrape waits for the stored state it reports.
pub const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);

jitgate_api::wire_enum! {
    /// The readiness verdict.
    pub enum ReadyStatus("readiness") {
        Ready = "ready",
        NotReady = "notReady",
    }
}

jitgate_api::wire_enum! {
    /// Whether the database answered.
    pub enum DatabaseCheck("database check") {
        Ok = "ok",
        /// The query failed (connection refused or lost, file unreadable, pool closed).
        Unreachable = "unreachable",
        /// No answer within [`READY_TIMEOUT`].
        Timeout = "timeout",
    }
}

jitgate_api::wire_enum! {
    /// Whether the cluster has a leader (`lease`): someone does the once-per-cluster work.
    pub enum LeaderCheck("leader check") {
        /// This controller holds the leader lease.
        Leading = "leading",
        /// Another controller held it at the last look.
        Following = "following",
        /// No live holder seen for three lease times: sweeps, checkpoints and notification
        /// delivery have stopped (every controller failing to renew or take the lease).
        NoLeader = "noLeader",
    }
}

jitgate_api::wire_enum! {
    /// Whether this controller's configuration is the cluster's (the leader's fingerprint,
    /// `Config::fingerprint`).
    pub enum ConfigCheck("configuration check") {
        /// The same (or this controller leads).
        Same = "same",
        /// Different: a setting of controller.toml or a shared key or certificate differs.
        Differs = "differs",
        /// Not compared: no leader seen yet, or the leader runs another version (a rolling
        /// upgrade).
        Unknown = "unknown",
    }
}

jitgate_api::wire_enum! {
    /// Whether the database's schema is the one this binary migrates to.
    pub enum MigrationsCheck("migrations check") {
        Ok = "ok",
        /// Older than this binary's (not migrated).
        Behind = "behind",
        /// Newer: a newer controller migrated it; this one may misread it.
        Ahead = "ahead",
        /// The database did not answer.
        Unknown = "unknown",
    }
}

/// What `/readyz` answers: the verdict and each check's result, nothing else (no error text,
/// which could name hosts or paths).
#[derive(Clone, Debug, Serialize)]
pub struct Readiness {
    pub status: ReadyStatus,
    pub checks: Checks,
}

#[derive(Clone, Debug, Serialize)]
pub struct Checks {
    pub database: DatabaseCheck,
    pub migrations: MigrationsCheck,
    pub leader: LeaderCheck,
    pub config: ConfigCheck,
    /// Sign-in with the identity provider, when configured: `ready` or `unavailable` (the
    /// controller stays ready: API tokens work and discovery is retried).
    #[serde(rename = "signIn", skip_serializing_if = "Option::is_none")]
    pub sign_in: Option<&'static str>,
    /// Whether this controller holds the private half of every grant-signing key in use (the
    /// current one, and the announced one during a rotation): not ready otherwise.
    #[serde(rename = "grantSigningKey", skip_serializing_if = "Option::is_none")]
    pub grant_signing_key: Option<KeyCheck>,
}

/// The grant-signing key check: `ok`, or `missing` with the ids of the keys whose private
/// half is not in this controller's state directory (`keys/grant-<id>.key`).
#[derive(Clone, Debug, Serialize)]
pub struct KeyCheck {
    pub status: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<String>,
}

impl Readiness {
    /// Adds the grant-signing key check; missing keys make the controller not ready.
    pub fn with_keys(mut self, keys: &crate::keys::Ring) -> Readiness {
        let snap = keys.snapshot();
        let mut missing: Vec<String> = snap.missing.iter().map(ToString::to_string).collect();
        if !snap.loaded || snap.current.is_none() {
            missing.push("unknown".into());
        }
        if !missing.is_empty() {
            tracing::warn!(missing = ?missing, "readiness: grant-signing key(s) missing on this controller");
            self.status = ReadyStatus::NotReady;
        }
        self.checks.grant_signing_key = Some(KeyCheck {
            status: if missing.is_empty() { "ok" } else { "missing" },
            missing,
        });
        self
    }
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.status == ReadyStatus::Ready
    }
}

/// Whether the database answers within [`READY_TIMEOUT`] and its schema is this binary's;
/// records the probe in `metrics`.
async fn database(db: &Db, metrics: &Metrics) -> (DatabaseCheck, MigrationsCheck) {
    let start = Instant::now();
    let r = tokio::time::timeout(READY_TIMEOUT, sql::schema_version(db.pool())).await;
    let seconds = start.elapsed().as_secs_f64();
    let (database, migrations) = match r {
        Ok(Ok(v)) => (
            DatabaseCheck::Ok,
            match v.cmp(&SCHEMA_VERSION) {
                std::cmp::Ordering::Equal => MigrationsCheck::Ok,
                std::cmp::Ordering::Less => MigrationsCheck::Behind,
                std::cmp::Ordering::Greater => MigrationsCheck::Ahead,
            },
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "readiness: the database query failed");
            (DatabaseCheck::Unreachable, MigrationsCheck::Unknown)
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = READY_TIMEOUT.as_millis() as u64,
                "readiness: the database did not answer in time"
            );
            (DatabaseCheck::Timeout, MigrationsCheck::Unknown)
        }
    };
    metrics.db_probe(seconds, database == DatabaseCheck::Ok);
    if migrations != MigrationsCheck::Ok && database == DatabaseCheck::Ok {
        tracing::warn!(
            expected = SCHEMA_VERSION,
            check = %migrations,
            "readiness: the database schema is not this controller's"
        );
    }
    (database, migrations)
}

/// Checks the database, its schema and that the cluster has a leader; records the probe in
/// `metrics`.
pub async fn readiness(db: &Db, metrics: &Metrics, leader: &LeaderStatus) -> Readiness {
    let (database, migrations) = database(db, metrics).await;
    let config = match leader.config_matches {
        Some(true) => ConfigCheck::Same,
        Some(false) => ConfigCheck::Differs,
        None => ConfigCheck::Unknown,
    };
    let leader = leader_check(leader);
    if leader == LeaderCheck::NoLeader {
        tracing::warn!("readiness: no controller has held the leader lease for three lease times");
    }
    let ready = database == DatabaseCheck::Ok
        && migrations == MigrationsCheck::Ok
        && leader != LeaderCheck::NoLeader
        && config != ConfigCheck::Differs;
    Readiness {
        status: if ready {
            ReadyStatus::Ready
        } else {
            ReadyStatus::NotReady
        },
        checks: Checks {
            database,
            migrations,
            leader,
            config,
            sign_in: None,
            grant_signing_key: None,
        },
    }
}

/// A controller that just started has not looked yet: it is given three lease times too.
fn leader_check(s: &LeaderStatus) -> LeaderCheck {
    if s.leading {
        return LeaderCheck::Leading;
    }
    match s.since_live_holder {
        Some(d) if d <= s.ttl * 3 => LeaderCheck::Following,
        None if s.running_for <= s.ttl * 3 => LeaderCheck::Following,
        _ => LeaderCheck::NoLeader,
    }
}

/// Probes the database every [`PROBE_EVERY`] (the first at once) until `shutdown`.
pub fn spawn_probe(
    db: Db,
    metrics: Metrics,
    mut shutdown: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let (database, _) = database(&db, &metrics).await;
            tracing::trace!(%database, "database probe");
        }
    })
}

/// The approval decision times exported are those of the last hour...
const DECISION_WINDOW_MS: i64 = 3_600_000;
/// ... at most this many (the latest), so a scrape stays cheap under a burst.
const DECISION_SAMPLES: i64 = 10_000;

/// The stored state a scrape reports, read now.
pub async fn sample(app: &App) -> Result<Sample> {
    let now = jitgate_api::time::now_ms();
    let pool = app.db.pool();
    let pending = sql::pending_grants(pool, now)
        .await?
        .into_iter()
        .map(|(vm, count, oldest_ms)| PendingGrants {
            vm,
            count,
            oldest_age_seconds: (now - oldest_ms).max(0) as f64 / 1000.0,
        })
        .collect();
    let mut counts = AgentCounts::default();
    for rec in agents::active_by_vm(pool).await?.into_values() {
        let (c, _) = app.presence.shown(
            &rec.id,
            &AgentStatus::Active,
            rec.last_seen_ms,
            rec.heartbeat.as_ref(),
            now,
        );
        match c {
            AgentConnection::Online => counts.online += 1,
            AgentConnection::Degraded => counts.degraded += 1,
            AgentConnection::Offline => counts.offline += 1,
            _ => {}
        }
    }
    let (head, _) = cluster::heads(pool).await?;
    let checkpoint = sql::last_checkpoint(pool)
        .await?
        .map(|(seq, time_ms)| CheckpointSample {
            seq,
            age_seconds: (now - time_ms).max(0) as f64 / 1000.0,
        });
    let (approvals_pending, oldest_approval) = sql::pending_approvals(pool).await?;
    let verified = crate::store::verified::get(pool).await?;
    Ok(Sample {
        pending,
        agents: counts,
        activity_head_seq: head,
        checkpoint,
        pg_notification_queue_usage: app.cluster.notification_queue_usage(),
        notify: crate::store::notify::counts(&mut *pool.acquire().await?).await?,
        notify_oldest_age_seconds: crate::store::notify::oldest_pending(
            &mut *pool.acquire().await?,
        )
        .await?
        .into_iter()
        .map(|(sink, at)| (sink, (now - at).max(0) as f64 / 1000.0))
        .collect(),
        verified_seq: verified.as_ref().map(|v| v.seq),
        verification_failed: verified.is_some_and(|v| v.failed_seq.is_some()),
        leader_epoch: app.leader.status().epoch,
        approvals_pending,
        approvals_oldest_age_seconds: oldest_approval.map(|at| (now - at).max(0) as f64 / 1000.0),
        decision_seconds: sql::decision_waits(pool, now - DECISION_WINDOW_MS, DECISION_SAMPLES)
            .await?
            .into_iter()
            .map(|ms| ms as f64 / 1000.0)
            .collect(),
    })
}

/// Samples the stored state within [`SAMPLE_TIMEOUT`] and renders every metric. When the
/// database does not answer, the sampled gauges keep their last values and the failure is
/// counted with the probe errors.
pub async fn scrape(app: &App, metrics: &Metrics) -> Result<String> {
    let s = match tokio::time::timeout(SAMPLE_TIMEOUT, sample(app)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: reading the stored state failed");
            None
        }
        Err(_) => {
            tracing::warn!("metrics: reading the stored state timed out");
            None
        }
    };
    if s.is_none() {
        metrics.db_error();
    }
    metrics
        .render(s.as_ref())
        .await
        .map_err(|e| Error::Internal(format!("rendering metrics: {e}")))
}

/// The expiry (unix seconds) of the first certificate in a PEM file.
pub fn cert_expiry(pem: &str) -> std::result::Result<i64, String> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| format!("not a PEM certificate: {e}"))?;
    let cert = p
        .parse_x509()
        .map_err(|e| format!("unparsable certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// Every certificate of a PEM file (a bundle), in order: fingerprint, subject, expiry.
pub fn cert_expiries(pem: &str) -> std::result::Result<Vec<CertExpiry>, String> {
    use rustls_pki_types::pem::PemObject;
    use sha2::{Digest, Sha256};
    let mut out = Vec::new();
    for der in rustls_pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let der = der.map_err(|e| format!("not a PEM certificate: {e}"))?;
        let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
            .map_err(|e| format!("unparsable certificate: {e}"))?;
        let digest = hex::encode(Sha256::digest(der.as_ref()));
        out.push(CertExpiry {
            fingerprint: digest[..16].to_string(),
            subject: cert.subject().to_string(),
            not_after_unix: cert.validity().not_after.timestamp(),
        });
    }
    if out.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(out)
}

/// Exports the expiry of the server certificate (the first of its file: the leaf) and of
/// every certificate of the CA bundle (PEM text).
pub fn record_cert_expiry(metrics: &Metrics, server_pem: &str, ca_pem: &str) {
    for (kind, pem) in [(CertKind::Server, server_pem), (CertKind::Ca, ca_pem)] {
        match cert_expiries(pem) {
            Ok(mut certs) => {
                if kind == CertKind::Server {
                    certs.truncate(1);
                }
                metrics.set_cert_expiry(kind, &certs);
            }
            Err(e) => tracing::warn!(certificate = %kind, error = %e, "cannot read the expiry"),
        }
    }
}
