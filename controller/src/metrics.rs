//! The controller's Prometheus metrics: one [`Metrics`] value per running controller (its own
//! registry, never process-wide, so two controllers in one process count apart), rendered in
//! the Prometheus text format (0.0.4) by the maintained `prometheus-client` crate.
//!
//! Counters and the database histogram move as things happen; the gauges that describe
//! stored state (pending grants, agents, the activity log) are set from the database just
//! before each scrape (`health::sample`). Every metric is documented in docs/operations.md,
//! "Metrics and health"; a test compares that table with what a scrape returns.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// A gauge holding a float (ages, ratios, timestamps).
pub type FloatGauge = Gauge<f64, AtomicU64>;

jitgate_api::wire_enum! {
    /// How an API request ended, by its HTTP status class.
    pub enum Outcome("request outcome") {
        /// 1xx-3xx.
        Success = "success",
        /// 4xx: refused (bad input, no right, unknown thing, conflict).
        ClientError = "client_error",
        /// 5xx: the controller failed.
        ServerError = "server_error",
    }
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            500.. => Outcome::ServerError,
            400..=499 => Outcome::ClientError,
            _ => Outcome::Success,
        }
    }
}

/// Label values are the enums' wire names.
macro_rules! label_values {
    ($($t:ty),+) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, e: &mut LabelValueEncoder) -> std::fmt::Result {
                std::fmt::Write::write_str(e, self.as_str())
            }
        }
    )+};
}

/// `jitgate_http_requests_total` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Method and route template (`POST /api/v1/requests/{id}/revoke`), or `unmatched`.
    pub operation: String,
    pub outcome: Outcome,
}

/// Labels naming a VM (each VM has at most one active agent).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VmLabels {
    pub vm: String,
}

/// Labels of a notification sink's deliveries in one state (`DeliveryState::as_str`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NotifyLabels {
    pub sink: String,
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SinkLabels {
    pub sink: String,
}

/// The quantiles of approval decision time exported (0.5, 0.9 and the longest).
pub const DECISION_QUANTILES: [(&str, f64); 3] = [("0.5", 0.5), ("0.9", 0.9), ("1", 1.0)];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QuantileLabels {
    pub quantile: &'static str,
}

jitgate_api::wire_enum! {
    /// The connection states an active agent is counted in (`jitgate_agents`).
    pub enum AgentState("agent state") {
        Online = "online",
        Degraded = "degraded",
        Offline = "offline",
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AgentLabels {
    pub state: AgentState,
}

jitgate_api::wire_enum! {
    /// The certificates whose expiry is exported.
    pub enum CertKind("certificate") {
        /// The API's and the agent channel's server certificate.
        Server = "server",
        /// The CA agents and operators trust.
        Ca = "ca",
    }
}

/// One certificate's series: which file it is from, and which certificate of it (every
/// certificate of a CA bundle has its own).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    pub certificate: CertKind,
    /// The first 16 hex digits of the SHA-256 of the certificate (DER).
    pub fingerprint: String,
    /// Its subject, as RFC 4514 text.
    pub subject: String,
}

/// A certificate's expiry as exported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertExpiry {
    pub fingerprint: String,
    pub subject: String,
    pub not_after_unix: i64,
}

label_values!(Outcome, AgentState, CertKind);

/// A metric with no labels whose sample may be absent (no value known yet): a family with
/// the one empty label set, or nothing.
pub type Optional = Family<Vec<(String, String)>, FloatGauge>;

/// Sets an [`Optional`] gauge, or removes its sample.
pub fn set_optional(g: &Optional, v: Option<f64>) {
    match v {
        Some(v) => {
            g.get_or_create(&Vec::new()).set(v);
        }
        None => g.clear(),
    }
}

/// A metric always described: `# HELP` and `# TYPE` even without a sample (the registry
/// leaves out empty families; a scraper, and the documentation test, should see every
/// metric the controller has).
#[derive(Debug)]
struct Described<M> {
    name: &'static str,
    help: &'static str,
    metric: M,
}

impl<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static> Collector for Described<M> {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let m = e.encode_descriptor(self.name, self.help, None, self.metric.metric_type())?;
        self.metric.encode(m)
    }
}

fn add<M: EncodeMetric + std::fmt::Debug + Send + Sync + 'static>(
    r: &mut Registry,
    name: &'static str,
    help: &'static str,
    metric: M,
) {
    r.register_collector(Box::new(Described { name, help, metric }));
}

/// One controller's metrics. Clones share them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    /// Serialises scrapes: the sampled gauges are cleared and set, then encoded.
    scrape: tokio::sync::Mutex<()>,
    requests: Family<RequestLabels, Counter>,
    db_probe_seconds: Histogram,
    db_errors: Counter,
    grants_pending: Family<VmLabels, Gauge>,
    grants_pending_oldest_age: Family<VmLabels, FloatGauge>,
    agents: Family<AgentLabels, Gauge>,
    activity_head_seq: Gauge,
    checkpoint_seq: Optional,
    checkpoint_age: Optional,
    pg_queue_usage: Optional,
    cert_expiry: Family<CertLabels, Gauge>,
    /// The series last set per kind (a reload or a bundle change removes the old ones).
    cert_series: std::sync::Mutex<Vec<CertLabels>>,
    notify_deliveries: Family<NotifyLabels, Gauge>,
    notify_oldest_age: Family<SinkLabels, Gauge<f64, AtomicU64>>,
    approvals_pending: Gauge,
    approvals_oldest_age: Optional,
    verified_seq: Optional,
    verification_failed: Gauge,
    decision_seconds: Family<QuantileLabels, FloatGauge>,
    leader: Gauge,
    leader_epoch: Optional,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        add(
            &mut r,
            "jitgate_http_requests",
            "API requests handled, by operation and outcome",
            requests.clone(),
        );
        // 0.5 ms .. ~4 s.
        let db_probe_seconds = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        add(
            &mut r,
            "jitgate_db_probe_duration_seconds",
            "Time of each database probe (periodic and per readiness check)",
            db_probe_seconds.clone(),
        );
        let db_errors = Counter::default();
        add(
            &mut r,
            "jitgate_db_probe_errors",
            "Database probes that failed or timed out",
            db_errors.clone(),
        );
        let grants_pending = Family::<VmLabels, Gauge>::default();
        add(
            &mut r,
            "jitgate_grants_pending",
            "Active grants the VM's agent has not acknowledged yet",
            grants_pending.clone(),
        );
        let grants_pending_oldest_age = Family::<VmLabels, FloatGauge>::default();
        add(
            &mut r,
            "jitgate_grants_pending_oldest_age_seconds",
            "Age of the VM's oldest grant still pending delivery",
            grants_pending_oldest_age.clone(),
        );
        let agents = Family::<AgentLabels, Gauge>::default();
        add(
            &mut r,
            "jitgate_agents",
            "Active (not revoked) agents by connection state",
            agents.clone(),
        );
        let activity_head_seq = Gauge::default();
        add(
            &mut r,
            "jitgate_activity_head_seq",
            "Sequence number of the activity log's last entry",
            activity_head_seq.clone(),
        );
        let checkpoint_seq = Optional::default();
        add(
            &mut r,
            "jitgate_activity_checkpoint_seq",
            "Sequence number the last signed checkpoint covers",
            checkpoint_seq.clone(),
        );
        let checkpoint_age = Optional::default();
        add(
            &mut r,
            "jitgate_activity_checkpoint_age_seconds",
            "Time since the last signed checkpoint of the activity log",
            checkpoint_age.clone(),
        );
        let pg_queue_usage = Optional::default();
        add(
            &mut r,
            "jitgate_pg_notification_queue_usage_ratio",
            "PostgreSQL's notification queue in use (0-1), as last sampled",
            pg_queue_usage.clone(),
        );
        let cert_expiry = Family::<CertLabels, Gauge>::default();
        add(
            &mut r,
            "jitgate_tls_certificate_expiry_timestamp_seconds",
            "When a certificate the controller serves or trusts expires (unix seconds)",
            cert_expiry.clone(),
        );
        let notify_deliveries = Family::<NotifyLabels, Gauge>::default();
        add(
            &mut r,
            "jitgate_notify_deliveries",
            "Notification deliveries per sink and state (queued, retrying, delivered, dead)",
            notify_deliveries.clone(),
        );
        let notify_oldest_age = Family::<SinkLabels, Gauge<f64, AtomicU64>>::default();
        add(
            &mut r,
            "jitgate_notify_oldest_pending_age_seconds",
            "Age of the oldest notification still waiting for each sink (queued or retrying): the delivery lag",
            notify_oldest_age.clone(),
        );
        let verified_seq = Optional::default();
        add(
            &mut r,
            "jitgate_activity_verified_seq",
            "Entries of the activity log verified so far (chain and signed checkpoints)",
            verified_seq.clone(),
        );
        let verification_failed = Gauge::default();
        add(
            &mut r,
            "jitgate_activity_verification_failed",
            "1 when the activity log failed verification (an entry altered, removed or re-chained)",
            verification_failed.clone(),
        );
        let approvals_pending = Gauge::default();
        add(
            &mut r,
            "jitgate_approvals_pending",
            "Requests waiting for an approval decision (cluster-wide)",
            approvals_pending.clone(),
        );
        let approvals_oldest_age = Optional::default();
        add(
            &mut r,
            "jitgate_approvals_pending_oldest_age_seconds",
            "How long the oldest request waiting for approval has waited",
            approvals_oldest_age.clone(),
        );
        let decision_seconds = Family::<QuantileLabels, FloatGauge>::default();
        add(
            &mut r,
            "jitgate_approval_decision_seconds",
            "Time from request to final decision of the requests decided in the last hour, by quantile",
            decision_seconds.clone(),
        );
        let leader = Gauge::default();
        add(
            &mut r,
            "jitgate_leader",
            "1 while this controller holds the leader lease and does the once-per-cluster work (sweeps, schedules, checkpoints, notification delivery)",
            leader.clone(),
        );
        let leader_epoch = Optional::default();
        add(
            &mut r,
            "jitgate_leader_epoch",
            "The leader lease's epoch while this controller holds it (grows at every change of holder)",
            leader_epoch.clone(),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry: r,
                scrape: tokio::sync::Mutex::new(()),
                requests,
                db_probe_seconds,
                db_errors,
                grants_pending,
                grants_pending_oldest_age,
                agents,
                activity_head_seq,
                checkpoint_seq,
                checkpoint_age,
                pg_queue_usage,
                cert_expiry,
                cert_series: std::sync::Mutex::new(Vec::new()),
                notify_deliveries,
                notify_oldest_age,
                approvals_pending,
                approvals_oldest_age,
                verified_seq,
                verification_failed,
                decision_seconds,
                leader,
                leader_epoch,
            }),
        }
    }

    /// Counts one API request.
    pub fn request(&self, operation: String, outcome: Outcome) {
        self.inner
            .requests
            .get_or_create(&RequestLabels { operation, outcome })
            .inc();
    }

    /// Records one database probe: its duration, or a failure.
    pub fn db_probe(&self, seconds: f64, ok: bool) {
        self.inner.db_probe_seconds.observe(seconds);
        if !ok {
            self.inner.db_errors.inc();
        }
    }

    /// Counts a failed database read for health or metrics that has no probe duration.
    pub fn db_error(&self) {
        self.inner.db_errors.inc();
    }

    /// Sets the expiry (unix seconds) of the certificates of one kind: one series each,
    /// replacing the series of that kind set before.
    pub fn set_cert_expiry(&self, kind: CertKind, certs: &[CertExpiry]) {
        let Ok(mut series) = self.inner.cert_series.lock() else {
            return;
        };
        series.retain(|l| {
            if l.certificate == kind {
                self.inner.cert_expiry.remove(l);
                false
            } else {
                true
            }
        });
        for c in certs {
            let labels = CertLabels {
                certificate: kind,
                fingerprint: c.fingerprint.clone(),
                subject: c.subject.clone(),
            };
            self.inner
                .cert_expiry
                .get_or_create(&labels)
                .set(c.not_after_unix);
            series.push(labels);
        }
    }

    /// Sets the sampled gauges from `s` and renders every metric (scrapes one at a time).
    pub async fn render(&self, s: Option<&Sample>) -> Result<String, std::fmt::Error> {
        let _one = self.inner.scrape.lock().await;
        if let Some(s) = s {
            self.apply(s);
        }
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }

    fn apply(&self, s: &Sample) {
        let m = &self.inner;
        m.grants_pending.clear();
        m.grants_pending_oldest_age.clear();
        for p in &s.pending {
            let l = VmLabels { vm: p.vm.clone() };
            m.grants_pending.get_or_create(&l).set(p.count);
            m.grants_pending_oldest_age
                .get_or_create(&l)
                .set(p.oldest_age_seconds);
        }
        for st in AgentState::ALL {
            let n = match st {
                AgentState::Online => s.agents.online,
                AgentState::Degraded => s.agents.degraded,
                AgentState::Offline => s.agents.offline,
            };
            m.agents.get_or_create(&AgentLabels { state: *st }).set(n);
        }
        m.activity_head_seq.set(s.activity_head_seq);
        set_optional(&m.checkpoint_seq, s.checkpoint.map(|c| c.seq as f64));
        set_optional(&m.checkpoint_age, s.checkpoint.map(|c| c.age_seconds));
        set_optional(&m.pg_queue_usage, s.pg_notification_queue_usage);
        m.notify_deliveries.clear();
        for (sink, state, n) in &s.notify {
            m.notify_deliveries
                .get_or_create(&NotifyLabels {
                    sink: sink.clone(),
                    state: state.as_str().to_string(),
                })
                .set(*n);
        }
        m.notify_oldest_age.clear();
        for (sink, age) in &s.notify_oldest_age_seconds {
            m.notify_oldest_age
                .get_or_create(&SinkLabels { sink: sink.clone() })
                .set(*age);
        }
        set_optional(&m.verified_seq, s.verified_seq.map(|v| v as f64));
        m.verification_failed.set(i64::from(s.verification_failed));
        m.leader.set(i64::from(s.leader_epoch.is_some()));
        set_optional(&m.leader_epoch, s.leader_epoch.map(|e| e as f64));
        m.approvals_pending.set(s.approvals_pending);
        set_optional(&m.approvals_oldest_age, s.approvals_oldest_age_seconds);
        m.decision_seconds.clear();
        for (q, p) in DECISION_QUANTILES {
            if let Some(v) = quantile(&s.decision_seconds, p) {
                m.decision_seconds
                    .get_or_create(&QuantileLabels { quantile: q })
                    .set(v);
            }
        }
    }
}

/// The stored state a scrape reports, read just before it.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    pub pending: Vec<PendingGrants>,
    pub agents: AgentCounts,
    pub activity_head_seq: i64,
    pub checkpoint: Option<CheckpointSample>,
    pub pg_notification_queue_usage: Option<f64>,
    /// Notification deliveries per sink and state.
    pub notify: Vec<(String, jitgate_notify::DeliveryState, i64)>,
    /// Per sink with deliveries waiting, the age of the oldest (seconds).
    pub notify_oldest_age_seconds: Vec<(String, f64)>,
    /// Entries verified (None before the first verification).
    pub verified_seq: Option<i64>,
    /// Whether the last verification failed.
    pub verification_failed: bool,
    /// The leader lease's epoch while this controller holds it.
    pub leader_epoch: Option<i64>,
    /// Requests waiting for an approval decision.
    pub approvals_pending: i64,
    /// How long the oldest of them has waited (seconds); None when none waits.
    pub approvals_oldest_age_seconds: Option<f64>,
    /// How long each request decided in the last hour waited for its decision (seconds).
    pub decision_seconds: Vec<f64>,
}

/// The `p` quantile (nearest rank) of `v`; None for no values.
fn quantile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut sorted = v.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted.get(rank - 1).copied()
}

/// One VM's grants pending delivery.
#[derive(Clone, Debug)]
pub struct PendingGrants {
    pub vm: String,
    pub count: i64,
    pub oldest_age_seconds: f64,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct AgentCounts {
    pub online: i64,
    pub degraded: i64,
    pub offline: i64,
}

#[derive(Clone, Copy, Debug)]
pub struct CheckpointSample {
    pub seq: i64,
    pub age_seconds: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_controllers_count_apart_and_samples_replace_each_other() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.request("GET /healthz".into(), Outcome::Success);
        let ta = a.render(None).await.expect("render");
        let tb = b.render(None).await.expect("render");
        assert!(ta.contains(
            "jitgate_http_requests_total{operation=\"GET /healthz\",outcome=\"success\"} 1"
        ));
        assert!(!tb.contains("GET /healthz"), "{tb}");

        let one = Sample {
            pending: vec![PendingGrants {
                vm: "web1".into(),
                count: 2,
                oldest_age_seconds: 1.5,
            }],
            ..Sample::default()
        };
        let t = a.render(Some(&one)).await.expect("render");
        assert!(t.contains("jitgate_grants_pending{vm=\"web1\"} 2"), "{t}");
        assert!(t.contains("jitgate_agents{state=\"offline\"} 0"), "{t}");
        assert!(
            !t.lines()
                .any(|l| l.starts_with("jitgate_activity_checkpoint_age_seconds")),
            "no sample before a checkpoint: {t}"
        );
        assert!(
            t.contains("# TYPE jitgate_activity_checkpoint_age_seconds gauge\n"),
            "described all the same: {t}"
        );
        let t = a.render(Some(&Sample::default())).await.expect("render");
        assert!(
            !t.contains("vm=\"web1\""),
            "a VM without pending grants drops out: {t}"
        );
    }

    #[test]
    fn decision_quantiles_by_nearest_rank() {
        assert_eq!(quantile(&[], 0.5), None);
        let v = [4.0, 1.0, 3.0, 2.0, 10.0];
        assert_eq!(quantile(&v, 0.5), Some(3.0));
        assert_eq!(quantile(&v, 0.9), Some(10.0));
        assert_eq!(quantile(&v, 1.0), Some(10.0));
        assert_eq!(quantile(&[7.0], 0.5), Some(7.0));
    }

    #[test]
    fn outcomes_follow_the_status_class() {
        assert_eq!(Outcome::of_status(200), Outcome::Success);
        assert_eq!(Outcome::of_status(404), Outcome::ClientError);
        assert_eq!(Outcome::of_status(503), Outcome::ServerError);
    }
}
