//! One agent's connection: identification, `Hello`, then policy, grants and revocations
//! pushed as they commit, and the agent's results, reports, audit records and heartbeats.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use jitgate_api::{ActivityOutcome, AgentStatus, GrantOrigin, Operation, ProtoSel, StatusReason};
use jitgate_common::{MaxConnections, Port, ProtectedPort, Protocol};
use jitgate_proto::message::{AuditRecord, Outcome, ReportedGrant};
use jitgate_proto::{
    AgentMsg, CloseReason, ControllerMsg, FrameError, GrantBody, KeyId, KeyStep,
    LEVEL_AUDIT_RESEND, LEVEL_CERT_RENEWAL, LEVEL_CLOSE_REASON, LEVEL_CONNECTION_LIMITS,
    LEVEL_HOOK_REPORTS, LEVEL_KEY_ROTATION, LEVEL_SCHEDULED_GRANTS, LEVEL_SETTINGS,
    LimitedGrantBody, PROTOCOL_LEVEL, PolicyBody, RevokeBody, ScheduledGrantBody, Signed,
    write_frame,
};
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use uuid::Uuid;

use crate::app::App;
use crate::authz::Actor;
use crate::channel::reader;
use crate::channel::tls::{self, identify};
use crate::channel::{HELLO_TIMEOUT, OUTBOX_BATCH, STATUS_EVERY, Settings};
use crate::error::Error;
use crate::fleet::RenewalError;
use crate::fleet::marks::Marks;
use crate::store::Backend;
use crate::store::agents::Heartbeat;
use crate::store::grants::{GrantState, OutboxOp};

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

/// How long a connection made with an expired certificate waits for the renewal request.
const RENEW_ONLY_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// A connection made with a certificate that expired within the grace: `Welcome`, then the
/// agent's `RenewCertificate` and the answer, then the connection is closed. Nothing else
/// is sent (no settings, keys, policy, grants) and nothing else the agent sends is read
/// (reports, audit records): the agent reconnects with its renewed certificate for that.
async fn renew_only(
    app: &App,
    agent: Uuid,
    vm: &str,
    public_key: &[u8],
    wr: &mut Wr,
    rx: &mut mpsc::Receiver<reader::Incoming>,
) -> Result<(), ConnError> {
    tracing::info!(%agent, %vm, "agent connected with an expired certificate within the grace: renewal only");
    send(
        wr,
        &ControllerMsg::Welcome {
            agent_id: agent,
            controller_unix_ms: jitgate_api::time::now_ms(),
        },
    )
    .await?;
    let deadline = tokio::time::Instant::now() + RENEW_ONLY_WAIT;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| {
                ConnError::Protocol("expired certificate and no renewal request within 30 s".into())
            })?
            .ok_or_else(|| ConnError::Protocol("closed before renewing".into()))??;
        if let AgentMsg::RenewCertificate { csr_pem } = m {
            let answer = renewal_answer(app, agent, vm, public_key, &csr_pem, true).await?;
            send(wr, &answer).await?;
            return Ok(());
        }
        tracing::debug!(%agent, "message ignored: the connection serves the renewal only");
    }
}

/// Renews and answers: `Certificate`, or `RenewalRefused` with the reason.
async fn renewal_answer(
    app: &App,
    agent: Uuid,
    vm: &str,
    public_key: &[u8],
    csr_pem: &str,
    expired: bool,
) -> Result<ControllerMsg, ConnError> {
    match app
        .fleet
        .renew_certificate(agent, vm, public_key, csr_pem, expired)
        .await
    {
        Ok((certificate_pem, ca_bundle_pem)) => Ok(ControllerMsg::Certificate {
            certificate_pem,
            ca_bundle_pem,
        }),
        Err(RenewalError::Refused(reason)) => Ok(ControllerMsg::RenewalRefused { reason }),
        Err(RenewalError::Store(e)) => Err(ConnError::Store(e)),
    }
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, m: &ControllerMsg) -> Result<(), ConnError> {
    Ok(write_frame(w, m).await?)
}

type Wr = WriteHalf<TlsStream<TcpStream>>;

impl Conn {
    /// The key that signs now (a rotation may change it between two messages).
    fn key(&self) -> Result<Arc<SigningKey>, ConnError> {
        self.app
            .keys
            .signer()
            .map_err(|e| ConnError::Sign(e.to_string()))
    }

    async fn load_key_acks(&mut self) -> Result<(), ConnError> {
        for (k, s) in crate::store::grant_keys::acks_of(self.app.db.pool(), &self.agent_s).await? {
            let step = match s.as_str() {
                "announced" => KeyStep::Announced,
                "retired" => KeyStep::Retired,
                _ => continue,
            };
            if let Ok(id) = k.parse::<KeyId>() {
                self.key_acks.insert((id, step));
            }
        }
        Ok(())
    }

    /// The rotation steps this agent has not answered, each once per connection, to agents
    /// that understand them.
    async fn send_keys(&mut self, wr: &mut Wr) -> Result<(), ConnError> {
        if self.protocol < LEVEL_KEY_ROTATION {
            return Ok(());
        }
        let snap = self.app.keys.snapshot();
        let mut retired = false;
        for s in &snap.steps {
            let k = (s.key_id, s.step);
            if !s.for_agent_enrolled_at(self.enrolled_ms)
                || self.key_acks.contains(&k)
                || !self.key_sent.insert(k)
            {
                continue;
            }
            tracing::info!(agent = %self.agent, key = %s.key_id, step = s.step.as_str(), "key rotation step sent");
            send(wr, &s.msg).await?;
            retired |= s.step == KeyStep::Retired;
        }
        if retired && self.policy_seq >= 0 {
            // The agent keeps the signed policy for its restarts: the same policy again,
            // signed by the key it now pins.
            self.policy_seq = -1;
            self.send_policy(wr).await?;
        }
        Ok(())
    }

    async fn key_result(
        &mut self,
        key_id: KeyId,
        step: KeyStep,
        outcome: Outcome,
    ) -> Result<(), ConnError> {
        match outcome {
            Outcome::Applied { .. } | Outcome::AlreadyApplied => {
                tracing::info!(agent = %self.agent, key = %key_id, step = step.as_str(), "key rotation step acknowledged");
                let mut w = self.app.db.begin().await?;
                crate::store::grant_keys::ack(
                    &mut w,
                    &self.agent_s,
                    &key_id.to_string(),
                    step.as_str(),
                )
                .await?;
                w.commit().await?;
                self.key_acks.insert((key_id, step));
            }
            Outcome::Rejected { reason } => {
                tracing::warn!(agent = %self.agent, key = %key_id, step = step.as_str(), %reason, "key rotation step rejected by the agent");
                self.refused(
                    Operation::AgentResult,
                    serde_json::json!({"kind": Refused::Key.as_str(), "keyId": key_id.to_string(), "step": step.as_str(), "reason": reason}),
                )
                .await?;
            }
            Outcome::Scheduled { .. } => {}
        }
        Ok(())
    }

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

    async fn send_policy(&mut self, wr: &mut Wr) -> Result<(), ConnError> {
        let group = self.app.inventory.group_of(&self.vm).await?;
        let seq = self.app.policies.version(&self.vm, &group).await?;
        if seq == self.policy_seq {
            return Ok(());
        }
        self.policy_seq = seq;
        let mut ports: Vec<ProtectedPort> = Vec::new();
        if let Some(p) = self.app.policies.effective(&self.vm, &group).await? {
            for pp in &p.ports {
                let Some(port) = u16::try_from(pp.number).ok().and_then(Port::new) else {
                    tracing::error!(vm = %self.vm, number = pp.number, "stored policy port out of range");
                    continue;
                };
                let protos: &[Protocol] = match pp.protocol.parse::<ProtoSel>() {
                    Ok(p) => p.expand(),
                    Err(_) => {
                        tracing::error!(vm = %self.vm, protocol = %pp.protocol, "stored policy protocol invalid");
                        continue;
                    }
                };
                let on_expiry = pp.on_expiry;
                for &protocol in protos {
                    let p = ProtectedPort {
                        protocol,
                        port,
                        on_expiry,
                    };
                    if !ports
                        .iter()
                        .any(|x| x.protocol == protocol && x.port == port)
                    {
                        ports.push(p);
                    }
                }
            }
        }
        ports.sort();
        let body = PolicyBody {
            agent_id: self.agent,
            seq: u64::try_from(seq).unwrap_or(0),
            ports,
            issued_unix_ms: jitgate_api::time::now_ms(),
        };
        let s = Signed::sign(&body, &*self.key()?).map_err(|e| ConnError::Sign(e.to_string()))?;
        tracing::debug!(agent = %self.agent, seq, ports = body.ports.len(), "policy sent");
        send(wr, &ControllerMsg::Policy(s)).await
    }

    async fn request_info(&mut self, rid: &str, gid: &str) -> Result<(String, String), ConnError> {
        if let Some(x) = self.requests.get(rid) {
            return Ok(x.clone());
        }
        let (who, why) = self
            .app
            .lifecycle
            .grant_context(gid)
            .await?
            .map(|c| (c.requestor, c.justification))
            .unwrap_or_default();
        self.requests
            .insert(rid.to_string(), (who.clone(), why.clone()));
        Ok((who, why))
    }

    async fn grant_state(&self, id: &str) -> Result<Option<GrantState>, ConnError> {
        Ok(self.app.lifecycle.grant_context(id).await?.map(|c| c.state))
    }

    /// Sends the VM's outbox rows after the cursor, in seq order. On the first send after
    /// (re)connect, grants that are no longer active (revoked, superseded, expired meanwhile)
    /// are not sent; their revocations are.
    async fn send_outbox(&mut self, wr: &mut Wr, catch_up: bool) -> Result<(), ConnError> {
        loop {
            let items = self
                .app
                .lifecycle
                .outbox(&self.vm, self.cursor, OUTBOX_BATCH)
                .await?;
            let n = items.len();
            for it in items {
                let seq = it.seq;
                self.cursor = seq;
                let Ok(grant_id) = Uuid::parse_str(&it.grant_id) else {
                    tracing::error!(grant = %it.grant_id, seq, "grant id is not a UUID; not sent");
                    continue;
                };
                let useq = u64::try_from(seq).unwrap_or(0);
                if it.op == OutboxOp::Revoke {
                    let state = self.grant_state(&it.grant_id).await?;
                    let reason = if state == Some(GrantState::Superseded) {
                        StatusReason::NewerRequestInitiated
                    } else {
                        StatusReason::UserRequested
                    };
                    let body = RevokeBody {
                        agent_id: self.agent,
                        grant_id,
                        seq: useq,
                        reason: reason.as_str().into(),
                    };
                    let s = Signed::sign(&body, &*self.key()?)
                        .map_err(|e| ConnError::Sign(e.to_string()))?;
                    tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, %reason, "revoke sent");
                    send(wr, &ControllerMsg::Revoke(s)).await?;
                    continue;
                }
                let now = jitgate_api::time::now_ms();
                if it.end_ms <= now {
                    tracing::debug!(grant = %grant_id, seq, "grant ended before delivery; not sent");
                    continue;
                }
                if catch_up {
                    let state = self.grant_state(&it.grant_id).await?;
                    if !state.is_some_and(GrantState::is_active) {
                        tracing::debug!(grant = %grant_id, seq, state = ?state, "grant no longer active; not sent");
                        continue;
                    }
                }
                let Some(protocol) = it.protocol.concrete() else {
                    tracing::error!(grant = %grant_id, protocol = %it.protocol, "bad stored protocol");
                    continue;
                };
                let (Some(port), Ok(source)) = (Port::new(it.port), it.prefix.parse()) else {
                    tracing::error!(grant = %grant_id, port = it.port, prefix = %it.prefix, "bad stored grant");
                    continue;
                };
                let (requester, justification) =
                    self.request_info(&it.request_id, &it.grant_id).await?;
                let body = GrantBody {
                    agent_id: self.agent,
                    grant_id,
                    seq: useq,
                    request_id: it.request_id.clone(),
                    protocol,
                    port,
                    source,
                    start_unix_ms: it.start_ms,
                    end_unix_ms: it.end_ms,
                    remaining_ms: u64::try_from(it.end_ms - now).unwrap_or(0),
                    requester,
                    justification,
                };
                if let Some(limit) = it.max_connections {
                    // Limited: only an agent that enforces the limit may have it; an older
                    // one would read it as an unlimited grant, so it is never sent there in
                    // any form (requests are refused AgentTooOld; this holds it back should
                    // the agent have been replaced by an older one since).
                    if self.protocol < LEVEL_CONNECTION_LIMITS {
                        tracing::error!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, level = self.protocol, max_connections = limit.get(), "limited grant held back: the agent is too old to enforce its connection limit");
                        continue;
                    }
                    let starts_in_ms =
                        (it.start_ms > now).then(|| u64::try_from(it.start_ms - now).unwrap_or(0));
                    let limited = LimitedGrantBody {
                        grant: body,
                        max_connections: limit,
                        starts_in_ms,
                    };
                    let s = Signed::sign(&limited, &*self.key()?)
                        .map_err(|e| ConnError::Sign(e.to_string()))?;
                    tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, max_connections = limit.get(), ?starts_in_ms, "limited grant sent");
                    send(wr, &ControllerMsg::LimitedGrant(s)).await?;
                    continue;
                }
                if it.start_ms > now {
                    // Booked: only an agent that opens it at its start by itself may have it;
                    // an older one would apply it at receipt, so it waits here (and is sent
                    // when the VM's agent speaks a level that knows bookings).
                    if self.protocol < LEVEL_SCHEDULED_GRANTS {
                        tracing::warn!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, level = self.protocol, "booked grant held back: the agent is too old to open it at its start");
                        continue;
                    }
                    let booked = ScheduledGrantBody {
                        grant: body,
                        starts_in_ms: u64::try_from(it.start_ms - now).unwrap_or(0),
                    };
                    let s = Signed::sign(&booked, &*self.key()?)
                        .map_err(|e| ConnError::Sign(e.to_string()))?;
                    tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, starts_in_ms = booked.starts_in_ms, "booked grant sent");
                    send(wr, &ControllerMsg::ScheduledGrant(s)).await?;
                    continue;
                }
                let s = Signed::sign(&body, &*self.key()?)
                    .map_err(|e| ConnError::Sign(e.to_string()))?;
                tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, "grant sent");
                send(wr, &ControllerMsg::Grant(s)).await?;
            }
            if (n as i64) < OUTBOX_BATCH {
                return Ok(());
            }
        }
    }

    /// Records the acknowledgement without waiting for its commit, so that one agent's
    /// acknowledgements share group commits (the lifecycle's acknowledgement writer). If the
    /// commit fails the grant stays pending, and the agent's next connection redelivers it
    /// and acknowledges it again.
    fn ack(&self, grant_id: Uuid) {
        let actor = Actor::agent(self.agent);
        let (lifecycle, agent) = (self.app.lifecycle.clone(), self.agent);
        tokio::spawn(async move {
            match lifecycle.acknowledge(&actor, &grant_id.to_string()).await {
                Ok(()) => {}
                Err(Error::Refused { message, .. }) => {
                    tracing::warn!(%agent, grant = %grant_id, error = %message, "acknowledgement of an unknown grant");
                }
                Err(e) => {
                    tracing::error!(%agent, grant = %grant_id, error = %e, "acknowledgement not recorded; the grant is redelivered on the next connection");
                }
            }
        });
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
