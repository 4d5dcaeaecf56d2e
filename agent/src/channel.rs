//! The agent's side of the controller channel (docs/protocol.md): one outbound, mutually
//! authenticated TLS connection to one of the controllers (`crate::endpoints`); when it ends
//! or fails the next controller is tried at once, and after all of them failed in a row,
//! again with backoff and jitter.
//!
//! This task only moves frames. Everything that changes state (signed grants, revocations,
//! policies, reconciliation) goes to the core task, which answers on `out` once the change
//! is journaled and in the maps. Audit records stream from the audit log itself (the spool),
//! from the last seq the controller acknowledged.

use crate::audit::{self, AuditLine};
use crate::endpoints::Endpoints;
use crate::enroll::Enrollment;
use jitgate_proto::message::{AgentMsg, AuditRecord, ControllerMsg};
use jitgate_proto::{Endpoint, read_frame, silent_pings, write_frame};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};

/// Persistent marks: replay protection and audit delivery survive restarts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelState {
    /// Highest grant/revocation seq applied or rejected after verification.
    pub seq_high_water: u64,
    /// Version of the last policy applied.
    pub policy_seq: u64,
    /// Highest audit seq the controller acknowledged.
    pub audit_acked: u64,
}

impl ChannelState {
    pub const FILE: &'static str = "channel.json";

    pub fn load(state_dir: &Path) -> ChannelState {
        std::fs::read_to_string(state_dir.join(Self::FILE))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Writes atomically and durably.
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let data = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        crate::state_file::replace(&state_dir.join(Self::FILE), &data)
    }
}

pub type SharedState = Arc<Mutex<ChannelState>>;

/// The one writer of `channel.json`. Every audit acknowledgement moves a mark, and writing
/// the file (two fsyncs) on the task that reads the controller's frames held up the next
/// grant behind it; the core and the connection writing it at once could also interleave
/// in its temporary file. Requests made while a write is under way are served by one more
/// write of the latest state. A lost audit mark only makes the controller get some records
/// again (it stores each once); the replay high-water mark is the journal's to keep.
#[derive(Clone)]
pub struct MarkSaver {
    inner: Arc<SaverInner>,
}

struct SaverInner {
    wake: tokio::sync::Notify,
    /// Requests made so far, and the newest request covered by a finished write.
    requested: std::sync::atomic::AtomicU64,
    written: tokio::sync::watch::Sender<u64>,
}

impl MarkSaver {
    /// Starts the writer task (it lives as long as the runtime, and never ends on its own:
    /// [`MarkSaver::durable`] waits on it).
    pub fn spawn(state: SharedState, state_dir: PathBuf) -> MarkSaver {
        let inner = Arc::new(SaverInner {
            wake: tokio::sync::Notify::new(),
            requested: std::sync::atomic::AtomicU64::new(0),
            written: tokio::sync::watch::channel(0).0,
        });
        let i = inner.clone();
        tokio::spawn(async move {
            loop {
                i.wake.notified().await;
                let upto = i.requested.load(Ordering::Acquire);
                // Never ends on a poisoned lock: a policy's answer waits on this task.
                let s = state.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let dir = state_dir.clone();
                match tokio::task::spawn_blocking(move || s.save(&dir)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the channel marks"),
                    Err(e) => tracing::warn!(error = %e, "the channel mark writer failed"),
                }
                i.written.send_replace(upto);
            }
        });
        MarkSaver { inner }
    }

    /// Asks for the current state to be written soon; returns the request's number.
    pub fn save(&self) -> u64 {
        let n = self.inner.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.inner.wake.notify_one();
        n
    }

    /// Writes the current state and waits until a write that began after this call ended
    /// (the policy version, kept before its result is answered).
    pub async fn durable(&self) {
        let n = self.save();
        let mut rx = self.inner.written.subscribe();
        let _ = rx.wait_for(|w| *w >= n).await;
    }
}

/// The endpoint of the controller the channel is connected to now, if any.
pub type Connected = Arc<Mutex<Option<String>>>;

/// What is wrong with this agent's certificate, if anything (a renewal the controller
/// refused, an expired certificate refused at the handshake); shown by `jit-agent status`.
pub type CertProblem = Arc<Mutex<Option<String>>>;

/// Why the controller last closed this agent's connection on purpose (`ControllerMsg::Closing`,
/// e.g. "revoked by the controller"), until a controller welcomes it again; shown by
/// `jit-agent status`.
pub type ClosedByController = Arc<Mutex<Option<String>>>;

/// The protocol level the connected controller announced with `ControllerMsg::Level` (0:
/// none yet, or an older controller that never does). Messages of a newer level than it
/// (the hook report of level 7) are not sent.
pub type ControllerLevel = Arc<AtomicU32>;

/// What the channel asks of the core.
pub enum ChannelRequest {
    /// A state-changing message; answers go to `out`.
    Handle(ControllerMsg, mpsc::Sender<AgentMsg>),
    /// A heartbeat snapshot: the status report, after the hook report for a controller at
    /// level 7 or later.
    Heartbeat(oneshot::Sender<Vec<AgentMsg>>),
}

pub struct Channel {
    pub enrollment: Enrollment,
    /// Which controller to dial, and which next.
    pub endpoints: Endpoints,
    /// Set while a connection is up.
    pub connected: Connected,
    /// Set when the certificate cannot be renewed (cleared by a renewal).
    pub cert_problem: CertProblem,
    /// The connected controller's protocol level.
    pub controller_level: ControllerLevel,
    /// Why the controller closed the connection, if it said (cleared by a `Welcome`).
    pub closed_by_controller: ClosedByController,
    pub state: SharedState,
    pub state_dir: PathBuf,
    /// Writes `state` to `state_dir` (shared with the core).
    pub marks: MarkSaver,
    pub core: mpsc::Sender<ChannelRequest>,
    pub lines: broadcast::Sender<AuditLine>,
    pub version: String,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = jitgate_proto::STATUS_REPORT_EVERY;
/// With no frame from the controller for this long, the connection is considered dead; a
/// controller at level 3 or later says how often it pings, and then the limit is
/// [`jitgate_proto::SILENT_PINGS`] of those (two of its longer ones from level 11 on).
const SILENCE: Duration = Duration::from_secs(45);
/// The shortest and longest silence limit a controller's ping interval can set.
const SILENCE_BOUNDS: (Duration, Duration) = (Duration::from_secs(2), SILENCE);
/// A controller that does not accept the TCP connection within this is skipped (an address
/// whose packets are dropped would otherwise hold the agent for the system's SYN retries).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// The TLS handshake and the `Welcome` must come within this (a frozen controller's kernel
/// still accepts connections).
const WELCOME_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection that lasted this long (or that the controller closed in order) was a
/// success: the backoff starts again from the shortest wait.
const STABLE_AFTER: Duration = Duration::from_secs(10);

fn jitter(d: Duration) -> Duration {
    let f = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

/// How a session ended.
struct Ended {
    /// The controller welcomed the agent (the connection came up).
    welcomed: bool,
    result: Result<(), String>,
}

impl Channel {
    /// Runs forever: connect, serve, and when the connection ends or fails, the next
    /// controller at once; after every controller failed in a row, wait (backoff with
    /// jitter) and go round again.
    pub async fn run(mut self) {
        let mut backoff = MIN_BACKOFF;
        let mut failed_in_a_row = 0usize;
        let saver = self.marks.clone();
        loop {
            let endpoint = self.endpoints.current();
            let began = tokio::time::Instant::now();
            let ended = self.session(&endpoint, &saver).await;
            match &ended.result {
                Ok(()) => {
                    tracing::info!(%endpoint, "controller closed the channel")
                }
                Err(e) => tracing::warn!(%endpoint, error = %e, "controller channel down"),
            }
            if ended.welcomed {
                // The round starts again here: every other controller is tried at once.
                failed_in_a_row = 0;
                if ended.result.is_ok() || began.elapsed() >= STABLE_AFTER {
                    backoff = MIN_BACKOFF;
                }
            }
            failed_in_a_row += 1;
            self.endpoints.advance();
            if failed_in_a_row >= self.endpoints.list().len() {
                failed_in_a_row = 0;
                tokio::time::sleep(jitter(backoff)).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            } else {
                tracing::info!(next = %self.endpoints.current(), "trying the next controller");
            }
        }
    }

    async fn session(&mut self, endpoint: &Endpoint, saver: &MarkSaver) -> Ended {
        let mut welcomed = false;
        let result = self.serve(endpoint, &mut welcomed, saver).await;
        if let Ok(mut c) = self.connected.lock() {
            *c = None;
        }
        Ended { welcomed, result }
    }

    /// The controller closes the connection and said why: logged, kept for `jit-agent
    /// status`; returns the session's error.
    fn closed(&self, reason: jitgate_proto::CloseReason) -> String {
        tracing::error!(%reason, "the controller closed the connection: {reason}");
        if let Ok(mut c) = self.closed_by_controller.lock() {
            *c = Some(reason.to_string());
        }
        format!("the controller closed the connection: {reason}")
    }

    fn set_problem(&self, p: Option<String>) {
        if let Ok(mut c) = self.cert_problem.lock() {
            *c = p;
        }
    }

    async fn serve(
        &mut self,
        endpoint: &Endpoint,
        welcomed: &mut bool,
        saver: &MarkSaver,
    ) -> Result<(), String> {
        let cfg = self.enrollment.tls_config().map_err(|e| e.to_string())?;
        let validity = self.enrollment.cert_validity().ok();
        let expired_at = validity
            .filter(|v| now_unix() > v.not_after)
            .map(|v| v.not_after);
        let name = rustls_pki_types::ServerName::try_from(endpoint.host().to_string())
            .map_err(|e| e.to_string())?;
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            tokio::net::TcpStream::connect((endpoint.host(), endpoint.port())),
        )
        .await
        .map_err(|_| format!("connect timed out ({} s)", CONNECT_TIMEOUT.as_secs()))?
        .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let marks = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        let mut server_chain: Vec<rustls_pki_types::CertificateDer<'static>> = Vec::new();
        let (mut rd, mut wr) = tokio::time::timeout(WELCOME_TIMEOUT, async {
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS: {e}"))?;
            server_chain = tls
                .get_ref()
                .1
                .peer_certificates()
                .map(|c| c.iter().map(|d| d.clone().into_owned()).collect())
                .unwrap_or_default();
            let (mut rd, mut wr) = tokio::io::split(tls);
            write_frame(
                &mut wr,
                &AgentMsg::HelloV3 {
                    agent_id: self.enrollment.agent_id,
                    version: self.version.clone(),
                    seq_high_water: marks.seq_high_water,
                    audit_acked: marks.audit_acked,
                    policy_seq: marks.policy_seq,
                    protocol: jitgate_proto::PROTOCOL_LEVEL,
                },
            )
            .await
            .map_err(|e| e.to_string())?;
            match read_frame::<_, ControllerMsg>(&mut rd).await {
                Ok(Some(ControllerMsg::Welcome { agent_id, .. }))
                    if agent_id == self.enrollment.agent_id =>
                {
                    Ok((rd, wr))
                }
                Ok(Some(ControllerMsg::Closing { reason })) => Err(self.closed(reason)),
                Ok(Some(other)) => Err(format!("expected Welcome, got {other:?}")),
                Ok(None) => {
                    Err("the controller closed the connection (credential revoked?)".to_string())
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await
        .map_err(|_| {
            format!(
                "no TLS handshake and Welcome within {} s",
                WELCOME_TIMEOUT.as_secs()
            )
        })
        .and_then(|r| r)
        .map_err(|e| match expired_at {
            // TLS 1.3: the controller's refusal of the certificate shows at the first read.
            Some(at) => {
                let why = format!(
                    "this agent's certificate expired at {} (unix {at}) and the controller refused it ({e}): past the renewal grace, or the agent was revoked; re-enrol this host (jit-agent enroll)",
                    fmt_unix(at)
                );
                tracing::error!(expired_unix = at, error = %e, "certificate expired and refused: re-enrol this host");
                self.set_problem(Some(why.clone()));
                why
            }
            None => e,
        })?;
        *welcomed = true;
        if let Ok(mut c) = self.closed_by_controller.lock() {
            *c = None;
        }
        // Nothing newer than level 6 until this controller says its level.
        self.controller_level.store(0, Ordering::Relaxed);
        self.endpoints.connected(endpoint);
        if let Ok(mut c) = self.connected.lock() {
            *c = Some(endpoint.to_string());
        }
        tracing::info!(%endpoint, agent = %self.enrollment.agent_id, "controller channel up");
        let (tx, mut rx) = mpsc::channel::<AgentMsg>(1024);

        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if write_frame(&mut wr, &m).await.is_err() {
                    return;
                }
            }
        });
        let mut audit = tokio::spawn(stream_audit(
            self.state_dir.clone(),
            marks.audit_acked,
            self.lines.subscribe(),
            tx.clone(),
        ));
        let renewer = tokio::spawn(renew_when_due(self.enrollment.clone(), tx.clone()));
        // A report at once, every HEARTBEAT, and again as soon as the controller says its
        // level (a level-7 controller then has the hooks at connect).
        let report_now = Arc::new(tokio::sync::Notify::new());
        let heartbeat = {
            let core = self.core.clone();
            let tx = tx.clone();
            let report_now = report_now.clone();
            tokio::spawn(async move {
                loop {
                    let (otx, orx) = oneshot::channel();
                    if core.send(ChannelRequest::Heartbeat(otx)).await.is_err() {
                        return;
                    }
                    if let Ok(msgs) = orx.await {
                        for m in msgs {
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(HEARTBEAT) => {}
                        _ = report_now.notified() => {}
                    }
                }
            })
        };
        let mut silence = SILENCE;
        // `Settings.ping_every_ms`, once told: the silence limit follows it and the level.
        let mut pinged_every_ms = None;
        let result = loop {
            let msg = match tokio::time::timeout(silence, read_frame::<_, ControllerMsg>(&mut rd))
                .await
            {
                Err(_) => {
                    break Err(format!(
                        "no frame from the controller for {} ms",
                        silence.as_millis()
                    ));
                }
                Ok(Err(e)) => break Err(format!("bad frame, closing: {e}")),
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(m))) => m,
            };
            match msg {
                ControllerMsg::Ping { nonce } => {
                    // One way from level 10 on: the status reports tell the controller that
                    // this agent is alive.
                    if jitgate_proto::agent_answers_pings(
                        self.controller_level.load(Ordering::Relaxed),
                    ) {
                        let _ = tx.send(AgentMsg::Pong { nonce }).await;
                    }
                }
                ControllerMsg::Settings {
                    endpoints,
                    ping_every_ms,
                } => {
                    pinged_every_ms = Some(ping_every_ms);
                    silence =
                        silence_limit(ping_every_ms, self.controller_level.load(Ordering::Relaxed));
                    tracing::debug!(
                        silence_ms = silence.as_millis() as u64,
                        "controller settings"
                    );
                    self.endpoints.learn(&endpoints);
                }
                ControllerMsg::AuditAck { up_to } => {
                    let moved = self.state.lock().is_ok_and(|mut s| {
                        let m = up_to > s.audit_acked;
                        if m {
                            s.audit_acked = up_to;
                        }
                        m
                    });
                    if moved {
                        saver.save();
                    }
                }
                ControllerMsg::AuditResend { after } => {
                    // The controller's database lost records it had acknowledged (restored
                    // from a backup, or a promoted replica): send them again from the log.
                    let lowered = self.state.lock().ok().and_then(|mut s| {
                        (after < s.audit_acked).then(|| {
                            let was = s.audit_acked;
                            s.audit_acked = after;
                            was
                        })
                    });
                    if let Some(was) = lowered {
                        tracing::warn!(
                            after,
                            acknowledged = was,
                            "the controller lacks audit records it had acknowledged; sending them again"
                        );
                        // Through the same writer as the acknowledgements, so that a write of
                        // the higher mark under way cannot land after this one.
                        saver.save();
                        audit.abort();
                        audit = tokio::spawn(stream_audit(
                            self.state_dir.clone(),
                            after,
                            self.lines.subscribe(),
                            tx.clone(),
                        ));
                    }
                }
                ControllerMsg::Welcome { .. } => {}
                ControllerMsg::Level { protocol } => {
                    tracing::debug!(controller_level = protocol, "controller protocol level");
                    self.controller_level.store(protocol, Ordering::Relaxed);
                    // Level 11 and later pings sparser and is left after fewer intervals.
                    if let Some(ms) = pinged_every_ms {
                        silence = silence_limit(ms, protocol);
                    }
                    report_now.notify_one();
                }
                ControllerMsg::Certificate {
                    certificate_pem,
                    ca_bundle_pem,
                } => {
                    match self.enrollment.store_renewed(
                        &certificate_pem,
                        &ca_bundle_pem,
                        &server_chain,
                        endpoint.host(),
                    ) {
                        Ok(v) => {
                            tracing::info!(
                                not_after_unix = v.not_after,
                                renew_at_unix = v.renew_at(),
                                "certificate renewed and stored; used from the next connection"
                            );
                            self.set_problem(None);
                            if expired_at.is_some() {
                                // The controller closes a renewal-only connection; so do we.
                                break Ok(());
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "renewed certificate refused; the current one is kept");
                            self.set_problem(Some(format!("renewed certificate refused: {e}")));
                        }
                    }
                }
                ControllerMsg::Closing { reason } => break Err(self.closed(reason)),
                ControllerMsg::RenewalRefused { reason } => {
                    tracing::error!(%reason, "the controller refused to renew this agent's certificate");
                    self.set_problem(Some(format!(
                        "the controller refused to renew the certificate: {reason}"
                    )));
                }
                m => {
                    if self
                        .core
                        .send(ChannelRequest::Handle(m, tx.clone()))
                        .await
                        .is_err()
                    {
                        break Err("the agent is stopping".into());
                    }
                }
            }
        };
        writer.abort();
        audit.abort();
        heartbeat.abort();
        renewer.abort();
        result
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn fmt_unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}

/// Asks for a new certificate (same key) once two thirds of the current one's lifetime have
/// passed (at once when it expired: the controller then serves nothing but the renewal), and
/// again every 1/20 of the lifetime (2 s to 5 min) until one is stored.
async fn renew_when_due(enrollment: Enrollment, tx: mpsc::Sender<AgentMsg>) {
    loop {
        let v = match enrollment.cert_validity() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot read this agent's certificate; no renewal");
                return;
            }
        };
        let now = now_unix();
        let due = v.renew_at();
        if now < due {
            let wait = u64::try_from(due - now).unwrap_or(0).min(3600);
            tokio::time::sleep(Duration::from_secs(wait.max(1))).await;
            continue;
        }
        match enrollment.renewal_csr() {
            Ok(csr_pem) => {
                tracing::info!(
                    not_after_unix = v.not_after,
                    "asking the controller to renew this agent's certificate"
                );
                if tx
                    .send(AgentMsg::RenewCertificate { csr_pem })
                    .await
                    .is_err()
                {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot make a renewal request");
            }
        }
        let life = u64::try_from(v.not_after - v.not_before).unwrap_or(0);
        tokio::time::sleep(Duration::from_secs((life / 20).clamp(2, 300))).await;
    }
}

/// The silence limit for a controller that pings every `ping_every_ms` and announced
/// `controller_level` (0: not yet, or never).
fn silence_limit(ping_every_ms: u64, controller_level: u32) -> Duration {
    (Duration::from_millis(ping_every_ms) * silent_pings(controller_level))
        .clamp(SILENCE_BOUNDS.0, SILENCE_BOUNDS.1)
}

/// Sends the audit log from `after + 1` on, then every new record as it is written. If it
/// falls behind the live feed it goes back to the files.
async fn stream_audit(
    dir: PathBuf,
    after: u64,
    mut live: broadcast::Receiver<AuditLine>,
    tx: mpsc::Sender<AgentMsg>,
) {
    let record = |l: &AuditLine| AuditRecord {
        seq: l.body.seq,
        id: l.body.id.clone(),
        line: serde_json::to_string(l).unwrap_or_default(),
    };
    let mut last = after;
    loop {
        let d = dir.clone();
        if let Ok(Ok(all)) = tokio::task::spawn_blocking(move || audit::read_all(&d)).await {
            let pending: Vec<AuditRecord> = all
                .into_iter()
                .filter_map(Result::ok)
                .filter(|l| l.body.seq > last)
                .map(|l| record(&l))
                .collect();
            for chunk in pending.chunks(256) {
                last = chunk.last().map(|r| r.seq).unwrap_or(last);
                if tx
                    .send(AgentMsg::Audit {
                        records: chunk.to_vec(),
                    })
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
        loop {
            match live.recv().await {
                Ok(l) if l.body.seq > last => {
                    let mut batch = vec![record(&l)];
                    while batch.len() < 256 {
                        match live.try_recv() {
                            Ok(more) if more.body.seq > last => batch.push(record(&more)),
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                    last = batch.last().map(|r| r.seq).unwrap_or(last);
                    if tx.send(AgentMsg::Audit { records: batch }).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // Fell behind: the records are in the log; read them from there.
                Err(broadcast::error::RecvError::Lagged(_)) => break,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mark writer writes the state as it is when it runs: a burst of requests ends in
    /// a file with the last marks, and `durable` returns only once they are on disk.
    #[tokio::test]
    async fn the_mark_writer_writes_the_latest_marks() {
        let dir = tempfile::tempdir().unwrap();
        let state: SharedState = Arc::new(Mutex::new(ChannelState::default()));
        let saver = MarkSaver::spawn(state.clone(), dir.path().to_path_buf());
        for acked in 1..=50 {
            state.lock().unwrap().audit_acked = acked;
            saver.save();
        }
        state.lock().unwrap().policy_seq = 7;
        saver.durable().await;
        let on_disk = ChannelState::load(dir.path());
        assert_eq!((on_disk.audit_acked, on_disk.policy_seq), (50, 7));
        // Nothing is written without a request.
        state.lock().unwrap().policy_seq = 8;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(ChannelState::load(dir.path()).policy_seq, 7);
        saver.durable().await;
        assert_eq!(ChannelState::load(dir.path()).policy_seq, 8);
    }

    #[test]
    fn the_silence_limit_follows_the_controllers_pings_within_bounds() {
        assert_eq!(silence_limit(2_000, 0), Duration::from_secs(6));
        assert_eq!(silence_limit(0, 0), SILENCE_BOUNDS.0);
        assert_eq!(silence_limit(u64::MAX, 0), SILENCE);
        assert_eq!(silence_limit(60_000, 0), SILENCE);
        // A level-11 controller pings every 3 s for the same 6 s; a level-10 one every 2 s.
        let level_11 = jitgate_proto::LEVEL_SPARSE_PINGS;
        assert_eq!(silence_limit(3_000, level_11), Duration::from_secs(6));
        assert_eq!(
            silence_limit(2_000, jitgate_proto::LEVEL_QUIET_PINGS),
            Duration::from_secs(6)
        );
        // Told the sparse interval before the level: the longer limit until the level comes.
        assert_eq!(silence_limit(3_000, 0), Duration::from_secs(9));
    }
    use crate::audit::{AuditEvent, AuditLog};
    use jitgate_proto::AuditKind;
    use jitgate_proto::audit::AgentLine;

    /// Delivery does not stop at a record of a kind this build does not know: it goes out
    /// like the others, in order, and later records follow it.
    #[tokio::test]
    async fn record_of_unknown_kind_is_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = AuditLog::open(dir.path(), u64::MAX).unwrap();
        log.append([
            AuditEvent::new(AuditKind::AgentStarted, "agent"),
            AuditEvent::new("grant.extended", "agent"),
            AuditEvent::new(AuditKind::GrantApplied, "root"),
        ])
        .unwrap();
        log.sync().unwrap();
        let (lines, _) = broadcast::channel(16);
        let (tx, mut rx) = mpsc::channel(16);
        let task = tokio::spawn(stream_audit(
            dir.path().to_path_buf(),
            0,
            lines.subscribe(),
            tx,
        ));
        let Some(AgentMsg::Audit { records }) = rx.recv().await else {
            panic!("no audit records sent");
        };
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
        let odd = AgentLine::parse(&records[1].line).unwrap();
        assert_eq!(odd.kind.as_str(), "grant.extended");
        assert_eq!(odd.computed, odd.hash);
        for l in log
            .append([AuditEvent::new(AuditKind::GrantExpired, "agent")])
            .unwrap()
        {
            lines.send(l).unwrap();
        }
        let Some(AgentMsg::Audit { records }) = rx.recv().await else {
            panic!("no live record sent");
        };
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [4]);
        task.abort();
    }
}
