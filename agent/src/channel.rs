//! The agent's side of the controller channel (docs/protocol.md): one outbound, mutually
//! authenticated TLS connection, re-established after any failure with backoff and jitter.
//!
//! This task only moves frames. Everything that changes state (signed grants, revocations,
//! policies, reconciliation) goes to the core task, which answers on `out` once the change
//! is journaled and in the maps. Audit records stream from the audit log itself (the spool),
//! from the last seq the controller acknowledged.

use crate::audit::{self, AuditLine};
use crate::enroll::Enrollment;
use jitgate_proto::message::{AgentMsg, AuditRecord, ControllerMsg};
use jitgate_proto::{read_frame, write_frame};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
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

    /// Writes atomically and durably (tmp, fsync, rename).
    pub fn save(&self, state_dir: &Path) -> std::io::Result<()> {
        let tmp = state_dir.join("channel.json.tmp");
        let data = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&data)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, state_dir.join(Self::FILE))
    }
}

pub type SharedState = Arc<Mutex<ChannelState>>;

/// What the channel asks of the core.
pub enum ChannelRequest {
    /// A state-changing message; answers go to `out`.
    Handle(ControllerMsg, mpsc::Sender<AgentMsg>),
    /// A heartbeat snapshot.
    Heartbeat(oneshot::Sender<AgentMsg>),
}

pub struct Channel {
    pub enrollment: Enrollment,
    pub state: SharedState,
    pub state_dir: PathBuf,
    pub core: mpsc::Sender<ChannelRequest>,
    pub lines: broadcast::Sender<AuditLine>,
    pub version: String,
}

const MIN_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const HEARTBEAT: Duration = Duration::from_secs(10);
/// With no frame from the controller for this long, the connection is considered dead.
const SILENCE: Duration = Duration::from_secs(45);

fn jitter(d: Duration) -> Duration {
    let f = 0.8 + rand::random::<f64>() * 0.4;
    d.mul_f64(f)
}

impl Channel {
    /// Runs forever: connect, serve, reconnect.
    pub async fn run(self) {
        let mut backoff = MIN_BACKOFF;
        loop {
            match self.session().await {
                Ok(()) => {
                    tracing::info!(endpoint = %self.enrollment.endpoint, "controller closed the channel");
                    backoff = MIN_BACKOFF;
                }
                Err(e) => {
                    tracing::warn!(endpoint = %self.enrollment.endpoint, error = %e, "controller channel down")
                }
            }
            tokio::time::sleep(jitter(backoff)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn session(&self) -> Result<(), String> {
        let cfg = self.enrollment.tls_config().map_err(|e| e.to_string())?;
        let host = self
            .enrollment
            .endpoint
            .rsplit_once(':')
            .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']').to_string())
            .ok_or_else(|| format!("endpoint {:?} is not host:port", self.enrollment.endpoint))?;
        let name = rustls_pki_types::ServerName::try_from(host).map_err(|e| e.to_string())?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(&self.enrollment.endpoint),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (tx, mut rx) = mpsc::channel::<AgentMsg>(1024);
        let marks = self.state.lock().map(|s| s.clone()).unwrap_or_default();
        write_frame(
            &mut wr,
            &AgentMsg::HelloV2 {
                agent_id: self.enrollment.agent_id,
                version: self.version.clone(),
                seq_high_water: marks.seq_high_water,
                audit_acked: marks.audit_acked,
                protocol: jitgate_proto::PROTOCOL_LEVEL,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        match tokio::time::timeout(
            Duration::from_secs(10),
            read_frame::<_, ControllerMsg>(&mut rd),
        )
        .await
        {
            Ok(Ok(Some(ControllerMsg::Welcome { agent_id, .. })))
                if agent_id == self.enrollment.agent_id => {}
            Ok(Ok(Some(other))) => return Err(format!("expected Welcome, got {other:?}")),
            Ok(Ok(None)) => {
                return Err("the controller closed the connection (credential revoked?)".into());
            }
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no Welcome within 10 s".into()),
        }
        tracing::info!(endpoint = %self.enrollment.endpoint, agent = %self.enrollment.agent_id, "controller channel up");

        let writer = tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if write_frame(&mut wr, &m).await.is_err() {
                    return;
                }
            }
        });
        let audit = tokio::spawn(stream_audit(
            self.state_dir.clone(),
            marks.audit_acked,
            self.lines.subscribe(),
            tx.clone(),
        ));
        let heartbeat = {
            let core = self.core.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                loop {
                    let (otx, orx) = oneshot::channel();
                    if core.send(ChannelRequest::Heartbeat(otx)).await.is_err() {
                        return;
                    }
                    if let Ok(hb) = orx.await
                        && tx.send(hb).await.is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(HEARTBEAT).await;
                }
            })
        };
        let result = loop {
            let msg = match tokio::time::timeout(SILENCE, read_frame::<_, ControllerMsg>(&mut rd))
                .await
            {
                Err(_) => break Err("no frame from the controller for 45 s".to_string()),
                Ok(Err(e)) => break Err(format!("bad frame, closing: {e}")),
                Ok(Ok(None)) => break Ok(()),
                Ok(Ok(Some(m))) => m,
            };
            match msg {
                ControllerMsg::Ping { nonce } => {
                    let _ = tx.send(AgentMsg::Pong { nonce }).await;
                }
                ControllerMsg::AuditAck { up_to } => {
                    let save = self.state.lock().ok().and_then(|mut s| {
                        (up_to > s.audit_acked).then(|| {
                            s.audit_acked = up_to;
                            s.clone()
                        })
                    });
                    if let Some(s) = save
                        && let Err(e) = s.save(&self.state_dir)
                    {
                        tracing::warn!(error = %e, "cannot record the audit acknowledgement");
                    }
                }
                ControllerMsg::Welcome { .. } => {}
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
        result
    }
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
