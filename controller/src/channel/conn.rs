//! One agent's connection: identification, `Hello`, then policy, grants and revocations
//! pushed as they commit, and the agent's results, reports, audit records and heartbeats.
//!
//! - [`push`]: the policy and the grant outbox, as they commit; acknowledgements.
//! - [`keys`]: grant-signing key rotation steps and the agent's answers.
//! - [`renewal`]: certificate renewal, and connections that serve only that.

mod keys;
mod push;
mod renewal;

use renewal::{renew_only, renewal_answer};

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use jitgate_api::{ActivityOutcome, AgentStatus, GrantOrigin, Operation};
use jitgate_common::MaxConnections;
use jitgate_proto::message::{AuditRecord, Outcome, ReportedGrant};
use jitgate_proto::{
    AgentMsg, CloseReason, ControllerMsg, FrameError, KeyId, KeyStep, LEVEL_AUDIT_RESEND,
    LEVEL_CERT_RENEWAL, LEVEL_CLOSE_REASON, LEVEL_HOOK_REPORTS, LEVEL_SETTINGS, PROTOCOL_LEVEL,
    write_frame,
};
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use uuid::Uuid;

use crate::app::App;
use crate::channel::reader;
use crate::channel::tls::{self, identify};
use crate::channel::{HELLO_TIMEOUT, STATUS_EVERY, Settings};
use crate::error::Error;
use crate::fleet::marks::Marks;
use crate::store::Backend;
use crate::store::agents::Heartbeat;
use crate::store::grants::GrantState;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("storage: {0}")]
    Store(#[from] Error),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("signing: {0}")]
    Sign(String),
}

jitgate_api::wire_enum! {
    /// What an agent refused, as its activity entry says.
    enum Refused("refused") {
        Revoke = "revoke",
        Policy = "policy",
        Key = "key",
    }
}

struct Conn {
    app: App,
    agent: Uuid,
    agent_s: String,
    vm: String,
    /// Highest outbox seq sent on this connection (starts at the agent's high-water mark).
    cursor: i64,
    audit_acked: u64,
    /// Version of the policy last sent.
    policy_seq: i64,
    /// request id -> (requestor, justification)
    requests: HashMap<String, (String, String)>,
    /// The agent's protocol level: 1 for `Hello`, `HelloV2.protocol` otherwise.
    protocol: u32,
    /// The last status report kept for writing, and when.
    last_status: Option<(Heartbeat, tokio::time::Instant)>,
    /// The agent's last hook report on this connection (level 7 and later).
    hooks: Option<Vec<jitgate_api::InterfaceHook>>,
    /// Key rotation steps the agent answered (stored), and those sent on this connection.
    key_acks: HashSet<(KeyId, KeyStep)>,
    key_sent: HashSet<(KeyId, KeyStep)>,
    /// When the agent was enrolled: which past rotations it is sent (`keys::Step`).
    enrolled_ms: i64,
    /// The subject public key of the certificate the agent connected with: a renewal must
    /// carry it.
    public_key: Vec<u8>,
}

/// On SQLite a pong marks its agent seen at most this often: with pings every 2 s, a write
/// transaction per pong would cost every agent one commit in the single writer's queue every
/// 2 s; status reports (every 10 s) mark it seen as well.
const SEEN_BY_PONG_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// A status report that says what the last one said (the clock offset within
/// [`Heartbeat::OFFSET_MOVES_MS`]) is written at most this often: at 10 000 agents reporting
/// every 10 s, rewriting unchanged rows was most of the database's idle work. The stored
/// report's time stays within [`crate::store::agents::ONLINE_WITHIN_MS`] (45 s): at most
/// this plus one report interval and one flush old.
pub const STATUS_REWRITE_EVERY: std::time::Duration = std::time::Duration::from_secs(20);

/// Serves one agent connection until it ends; returns the agent's id.
pub async fn connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    app: App,
    settings: Arc<Settings>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<Uuid, ConnError> {
    let tls = tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(tcp))
        .await
        .map_err(|_| ConnError::Refused("TLS handshake timed out".into()))?
        .map_err(|e| ConnError::Refused(format!("TLS handshake: {e}")))?;
    let der = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .ok_or_else(|| ConnError::Refused("no client certificate".into()))?;
    let (agent, fp) = identify(&der).map_err(ConnError::Refused)?;
    let public_key = tls::public_key(&der)
        .ok_or_else(|| ConnError::Refused(format!("agent {agent}: unparsable certificate")))?;
    // The handshake accepts a certificate that expired within the renewal grace (and no
    // other expired one); such a connection renews it and does nothing else.
    let not_after = tls::not_after(&der).unwrap_or(i64::MAX);
    let expired = jitgate_api::time::now_ms() / 1000 > not_after;
    let row = app
        .fleet
        .identify(&fp)
        .await?
        .ok_or_else(|| ConnError::Refused(format!("agent {agent}: unknown certificate")))?;
    if row.id != agent.to_string() {
        return Err(ConnError::Refused(format!(
            "certificate of agent {} claims agent {agent}",
            row.id
        )));
    }
    let (rd, mut wr) = tokio::io::split(tls);
    // On PostgreSQL the presence refresh marks connected agents seen (`cluster`): no pong
    // is needed past the reader. On SQLite one now and then marks the agent seen.
    let pong_every = (app.db.backend() == Backend::Sqlite).then_some(SEEN_BY_PONG_EVERY);
    let (reader, mut rx, heard) = reader::spawn(rd, pong_every);
    let res = async {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, rx.recv())
            .await
            .map_err(|_| ConnError::Protocol("no Hello within 10 s".into()))?
            .ok_or_else(|| ConnError::Protocol("closed before Hello".into()))??;
        // `Hello` is level 1 (docs/protocol.md "Levels").
        // `policy_seq`: the policy version the agent applied, from level 8 on.
        let (agent_id, version, seq_high_water, audit_acked, policy_seq, protocol) = match hello
        {
            AgentMsg::Hello {
                agent_id,
                version,
                seq_high_water,
                audit_acked,
            } => (agent_id, version, seq_high_water, audit_acked, None, 1),
            AgentMsg::HelloV2 {
                agent_id,
                version,
                seq_high_water,
                audit_acked,
                protocol,
            } => (agent_id, version, seq_high_water, audit_acked, None, protocol),
            AgentMsg::HelloV3 {
                agent_id,
                version,
                seq_high_water,
                audit_acked,
                policy_seq,
                protocol,
            } => (
                agent_id,
                version,
                seq_high_water,
                audit_acked,
                Some(policy_seq),
                protocol,
            ),
            _ => return Err(ConnError::Protocol("first message is not Hello".into())),
        };
        if agent_id != agent {
            return Err(ConnError::Refused(format!(
                "Hello names agent {agent_id}, the certificate {agent}"
            )));
        }
        // A revoked agent is told why (level 9 and later) instead of being welcomed.
        if row.status != AgentStatus::Active {
            if protocol >= LEVEL_CLOSE_REASON {
                send(&mut wr, &ControllerMsg::Closing { reason: CloseReason::Revoked }).await?;
            }
            return Err(ConnError::Refused(format!(
                "agent {agent} (VM {}) is {}",
                row.vm, row.status
            )));
        }
        if expired {
            if protocol < LEVEL_CERT_RENEWAL {
                return Err(ConnError::Refused(format!(
                    "agent {agent} (VM {}): certificate expired and protocol level {protocol} cannot renew it: re-enrol the host",
                    row.vm
                )));
            }
            return renew_only(&app, agent, &row.vm, &public_key, &mut wr, &mut rx).await;
        }
        tracing::info!(%agent, vm = %row.vm, %version, protocol, seq_high_water, audit_acked, "agent connected");
        let mut c = Conn {
            app: app.clone(),
            agent,
            agent_s: agent.to_string(),
            vm: row.vm.clone(),
            cursor: i64::try_from(seq_high_water).unwrap_or(i64::MAX),
            audit_acked,
            policy_seq: -1,
            requests: HashMap::new(),
            protocol,
            last_status: None,
            hooks: None,
            key_acks: HashSet::new(),
            key_sent: HashSet::new(),
            enrolled_ms: row.enrolled_ms,
            public_key,
        };
        // Nothing to write when the level and version are the ones stored (a reconnect): the
        // Welcome of a fleet moving here after a controller failed waits for no write.
        if row.hello_changes(protocol, &version) {
            c.app.fleet.hello(&c.agent_s, protocol, &version).await?;
        }
        let _live = c.app.presence.connected(&c.agent_s);
        // Subscribe before reading the outbox, so no commit in between is missed: only
        // commits that touch this VM (or its group's policy) wake this connection.
        let group = c.app.inventory.group_of(&c.vm).await?;
        let mut wakeups = c.app.notifier.subscribe(&c.vm, &group);
        send(
            &mut wr,
            &ControllerMsg::Welcome {
                agent_id: agent,
                controller_unix_ms: jitgate_api::time::now_ms(),
            },
        )
        .await?;
        let (ping_every, silence) = settings.keepalive(protocol);
        if protocol >= LEVEL_SETTINGS {
            send(
                &mut wr,
                &ControllerMsg::Settings {
                    endpoints: settings.endpoints.clone(),
                    ping_every_ms: u64::try_from(ping_every.as_millis()).unwrap_or(u64::MAX),
                },
            )
            .await?;
        }
        // Level 7 and later: the controller's level, so that the agent sends what this
        // controller reads (its hook reports) and nothing newer.
        if protocol >= LEVEL_HOOK_REPORTS {
            send(
                &mut wr,
                &ControllerMsg::Level {
                    protocol: PROTOCOL_LEVEL,
                },
            )
            .await?;
        }
        // Marks above what the database issued (restored or promoted): move the sequences
        // past them before anything is numbered for this agent.
        let marks = Marks {
            seq_high_water,
            policy_seq,
        };
        c.app
            .fleet
            .recover_marks(&c.agent_s, &c.vm, marks)
            .await
            .map_err(|e| match e {
                Error::Refused { message, .. } => ConnError::Refused(message),
                e => e.into(),
            })?;
        c.recover_audit(&mut wr).await?;
        // A key rotation first: grants below may be signed by the announced key.
        let mut keys_changed = c.app.keys.subscribe();
        c.load_key_acks().await?;
        c.send_keys(&mut wr).await?;
        c.send_policy(&mut wr).await?;
        c.send_outbox(&mut wr, true).await?;
        let now = jitgate_api::time::now_ms();
        let mut grant_ids = Vec::new();
        for (g, _) in c.app.lifecycle.active_grants(&c.vm, now).await? {
            match Uuid::parse_str(&g) {
                Ok(u) => grant_ids.push(u),
                Err(_) => tracing::error!(grant = %g, "grant id is not a UUID; not sent"),
            }
        }
        send(
            &mut wr,
            &ControllerMsg::Active {
                grant_ids,
                up_to_seq: u64::try_from(c.cursor).unwrap_or(0),
            },
        )
        .await?;
        let mut ping = tokio::time::interval(ping_every);
        ping.reset();
        // Revocation is pushed (a wakeup for the VM, from any controller; on PostgreSQL the
        // cluster catch-up backs it). On SQLite an administration command in another process
        // cannot wake this one: poll.
        let poll_status = c.app.db.backend() == Backend::Sqlite;
        let mut status = tokio::time::interval(STATUS_EVERY);
        let mut nonce = 0u64;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { return Ok(()) };
                    c.handle(&mut wr, m?).await?;
                }
                w = wakeups.changed() => {
                    if w.agent {
                        c.check_status(&mut wr).await?;
                    }
                    if w.policy {
                        c.send_policy(&mut wr).await?;
                    }
                    if w.outbox {
                        c.send_outbox(&mut wr, false).await?;
                    }
                }
                _ = keys_changed.changed() => c.send_keys(&mut wr).await?,
                _ = ping.tick() => {
                    if heard.silent_for() >= silence {
                        return Err(ConnError::Protocol(format!(
                            "agent silent for {} ms", silence.as_millis())));
                    }
                    nonce += 1;
                    send(&mut wr, &ControllerMsg::Ping { nonce }).await?;
                }
                _ = status.tick(), if poll_status => c.check_status(&mut wr).await?,
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
    .await;
    reader.abort();
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut wr).await;
    res.map(|()| agent)
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &ControllerMsg) -> Result<(), ConnError> {
    Ok(write_frame(w, m).await?)
}

type Wr = WriteHalf<TlsStream<TcpStream>>;

impl Conn {
    /// Ends the connection unless its agent is still active; an agent at
    /// [`LEVEL_CLOSE_REASON`] or later is told why first.
    async fn check_status(&self, wr: &mut Wr) -> Result<(), ConnError> {
        match self.app.fleet.status(&self.agent_s).await? {
            Some(AgentStatus::Active) => Ok(()),
            other => {
                if self.protocol >= LEVEL_CLOSE_REASON {
                    send(
                        wr,
                        &ControllerMsg::Closing {
                            reason: CloseReason::Revoked,
                        },
                    )
                    .await?;
                }
                tracing::info!(agent = %self.agent, vm = %self.vm, "agent revoked: connection closed");
                Err(ConnError::Refused(format!(
                    "agent {} is now {}",
                    self.agent,
                    other.as_ref().map_or("unknown", |s| s.as_str())
                )))
            }
        }
    }

    /// An agent's refusal, in the activity log.
    async fn refused(&self, op: Operation, details: serde_json::Value) -> Result<(), ConnError> {
        self.app
            .fleet
            .log(
                &self.agent_s,
                &self.vm,
                op,
                ActivityOutcome::Failed,
                details,
            )
            .await?;
        Ok(())
    }

    async fn handle(&mut self, wr: &mut Wr, m: AgentMsg) -> Result<(), ConnError> {
        let now = jitgate_api::time::now_ms();
        match m {
            AgentMsg::Hello { .. } | AgentMsg::HelloV2 { .. } | AgentMsg::HelloV3 { .. } => {
                return Err(ConnError::Protocol(format!(
                    "a second Hello (level {})",
                    self.protocol
                )));
            }
            AgentMsg::RenewCertificate { csr_pem } => {
                if self.protocol < LEVEL_CERT_RENEWAL {
                    return Err(ConnError::Protocol(format!(
                        "a renewal request from an agent at level {}",
                        self.protocol
                    )));
                }
                let answer = renewal_answer(
                    &self.app,
                    self.agent,
                    &self.vm,
                    &self.public_key,
                    &csr_pem,
                    false,
                )
                .await?;
                send(wr, &answer).await?;
            }
            AgentMsg::GrantResult {
                grant_id,
                seq,
                outcome,
            } => match outcome {
                Outcome::Applied { .. } | Outcome::AlreadyApplied => {
                    tracing::info!(agent = %self.agent, grant = %grant_id, seq, "grant applied");
                    self.ack(grant_id);
                }
                Outcome::Scheduled { opens_unix_ms, .. } => {
                    tracing::debug!(agent = %self.agent, grant = %grant_id, seq, opens_unix_ms, "grant booked on the agent");
                }
                Outcome::Rejected { reason } => {
                    tracing::warn!(agent = %self.agent, grant = %grant_id, seq, %reason, "grant rejected by the agent");
                    self.refused(
                        Operation::AgentRejected,
                        serde_json::json!({"grantId": grant_id.to_string(), "seq": seq, "reason": reason}),
                    )
                    .await?;
                }
            },
            AgentMsg::RevokeResult {
                grant_id,
                seq,
                outcome,
            } => {
                if let Outcome::Rejected { reason } = outcome {
                    tracing::warn!(agent = %self.agent, grant = %grant_id, seq, %reason, "revocation rejected by the agent");
                    self.refused(
                        Operation::AgentResult,
                        serde_json::json!({"kind": Refused::Revoke.as_str(), "grantId": grant_id.to_string(), "seq": seq, "reason": reason}),
                    )
                    .await?;
                } else {
                    tracing::info!(agent = %self.agent, grant = %grant_id, seq, "revocation applied");
                }
            }
            AgentMsg::PolicyResult { seq, outcome } => {
                if let Outcome::Rejected { reason } = outcome {
                    tracing::warn!(agent = %self.agent, seq, %reason, "policy rejected by the agent");
                    self.refused(
                        Operation::AgentResult,
                        serde_json::json!({"kind": Refused::Policy.as_str(), "seq": seq, "reason": reason}),
                    )
                    .await?;
                } else {
                    tracing::info!(agent = %self.agent, seq, "policy applied");
                }
            }
            AgentMsg::Grants { grants } => {
                self.report(grants.into_iter().map(|g| (g, None)).collect())
                    .await?
            }
            AgentMsg::GrantsWithLimits { grants } => {
                self.report(
                    grants
                        .into_iter()
                        .map(|g| (g.grant, g.max_connections))
                        .collect(),
                )
                .await?
            }
            AgentMsg::ScheduledGrants { grants } => {
                tracing::debug!(agent = %self.agent, count = grants.len(), "bookings reported");
            }
            AgentMsg::Audit { records } => {
                let up_to = self.audit(&records).await?;
                send(wr, &ControllerMsg::AuditAck { up_to }).await?;
            }
            AgentMsg::Heartbeat(h) => {
                let hb = Heartbeat::from_agent(&h, None, now);
                self.status(hb);
            }
            AgentMsg::Status(r) => {
                let mut hb = Heartbeat::from_agent(&r.heartbeat, Some(&r), now);
                // The hooks came just before (level 7): their problems make it degraded.
                if let Some(hooks) = &self.hooks {
                    hb.hook_problems = hooks
                        .iter()
                        .filter_map(jitgate_api::InterfaceHook::problem_words)
                        .collect();
                }
                self.status(hb);
            }
            AgentMsg::Hooks { interfaces } => {
                if self.protocol < LEVEL_HOOK_REPORTS {
                    return Err(ConnError::Protocol(format!(
                        "a hook report from an agent at level {}",
                        self.protocol
                    )));
                }
                let hooks = crate::fleet::hooks_from_agent(interfaces);
                if self.hooks.as_ref() != Some(&hooks) {
                    tracing::info!(agent = %self.agent, vm = %self.vm, interfaces = hooks.len(),
                        problems = hooks.iter().filter(|h| h.problem.is_some()).count(),
                        "hook report");
                    self.app.fleet.hooks(&self.agent_s, &hooks)?;
                    self.hooks = Some(hooks);
                }
            }
            // Passed on by the reader only on SQLite, once per `SEEN_BY_PONG_EVERY`.
            AgentMsg::Pong { .. } => self.app.fleet.seen(&self.agent_s, None),
            AgentMsg::KeyResult {
                key_id,
                step,
                outcome,
            } => self.key_result(key_id, step, outcome).await?,
        }
        Ok(())
    }

    /// Keeps a status report for writing, unless it says what the last one kept said and
    /// that one is younger than [`STATUS_REWRITE_EVERY`].
    fn status(&mut self, hb: Heartbeat) {
        let now = tokio::time::Instant::now();
        if let Some((last, at)) = &self.last_status
            && now.duration_since(*at) < STATUS_REWRITE_EVERY
            && last.same_state(&hb)
        {
            return;
        }
        self.app.fleet.seen(&self.agent_s, Some(hb.clone()));
        self.last_status = Some((hb, now));
    }

    /// The agent's report of every grant it holds, each with its connection limit (none:
    /// unlimited, or an agent below [`jitgate_proto::LEVEL_GRANT_LIMITS`], which does not
    /// say): local break-glass grants are recorded once each; controller grants still
    /// pending here are acknowledged (a lost acknowledgement).
    async fn report(
        &mut self,
        grants: Vec<(ReportedGrant, Option<MaxConnections>)>,
    ) -> Result<(), ConnError> {
        let pending: Vec<String> = self
            .app
            .lifecycle
            .active_grants(&self.vm, jitgate_api::time::now_ms())
            .await?
            .into_iter()
            .filter(|(_, s)| *s == GrantState::Pending)
            .map(|(g, _)| g)
            .collect();
        for (g, limit) in &grants {
            let gid = g.grant_id.to_string();
            if g.origin == GrantOrigin::Local.as_str() {
                let new = self
                    .app
                    .fleet
                    .record_local_grant(&self.agent_s, &self.vm, g, *limit)
                    .await?;
                if new {
                    tracing::info!(agent = %self.agent, grant = %gid, "local break-glass grant reported");
                }
            } else if pending.contains(&gid) {
                tracing::info!(agent = %self.agent, grant = %gid, "lost acknowledgement recovered from the report");
                self.ack(g.grant_id);
            }
        }
        Ok(())
    }

    /// The agent's acknowledged audit mark is above the records stored from it (the
    /// database was restored or promoted): an agent at [`LEVEL_AUDIT_RESEND`] or later is
    /// asked to send them again from the last one stored; an older one cannot, and the
    /// records in between stay missing (logged).
    async fn recover_audit(&mut self, wr: &mut Wr) -> Result<(), ConnError> {
        if self.audit_acked == 0 {
            return Ok(());
        }
        let stored = crate::store::sequences::audit_max(self.app.db.pool(), &self.agent_s).await?;
        if stored >= self.audit_acked {
            return Ok(());
        }
        if self.protocol < LEVEL_AUDIT_RESEND {
            tracing::error!(agent = %self.agent, vm = %self.vm, stored, acknowledged = self.audit_acked, level = self.protocol, "the database lacks audit records this agent was told were stored, and its level cannot send them again");
            return Ok(());
        }
        tracing::warn!(agent = %self.agent, vm = %self.vm, stored, acknowledged = self.audit_acked, "the database lacks audit records this agent was told were stored; asking for them again");
        self.audit_acked = stored;
        send(wr, &ControllerMsg::AuditResend { after: stored }).await
    }

    async fn audit(&mut self, records: &[AuditRecord]) -> Result<u64, ConnError> {
        let up_to = self
            .app
            .fleet
            .store_audit(&self.agent_s, self.audit_acked, records)
            .await?;
        self.audit_acked = up_to;
        tracing::debug!(agent = %self.agent, records = records.len(), up_to, "audit records stored");
        Ok(up_to)
    }
}
