//! The agent channel (docs/protocol.md): a TLS listener that requires a client certificate
//! chained to the controller CA, one long-lived connection per agent, signed policy, grants
//! and revocations pushed from the grant outbox, results, reports, audit records and
//! heartbeats from the agent.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use jitgate_common::{Port, ProtectedPort, Protocol};
use jitgate_proto::message::{AuditRecord, Outcome, ReportedGrant};
use jitgate_proto::{
    AgentMsg, ControllerMsg, FrameError, GrantBody, PolicyBody, RevokeBody, Signed, read_frame,
    write_frame,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use uuid::Uuid;

use crate::agents::{AGENT_URI_PREFIX, HeartbeatJson};
use crate::error::{SetupError, StoreError};
use crate::model::now_ms;
use crate::store::{Actor, Store, op};
use jitgate_api::ProtoSel;

/// Keepalive: a Ping after this long without traffic from the agent.
pub const PING_EVERY: Duration = Duration::from_secs(15);
/// A connection silent for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(45);
/// How often a connection re-checks that its agent is still active (revocation).
pub const STATUS_EVERY: Duration = Duration::from_secs(1);
/// Time allowed for the TLS handshake and the agent's Hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Outbox rows read per query.
const OUTBOX_BATCH: i64 = 500;

/// The TLS configuration of the agent listener: the controller's server certificate, and a
/// client certificate chained to the controller CA required.
pub fn agent_tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
    ca: &std::path::Path,
) -> Result<rustls::ServerConfig, SetupError> {
    let bad = |p: &std::path::Path, e: rustls_pki_types::pem::Error| {
        SetupError::Invalid(format!("{}: {e}", p.display()))
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad(cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad(cert, e))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| bad(key, e))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| bad(ca, e))? {
        roots.add(c.map_err(|e| bad(ca, e))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| SetupError::Invalid(format!("client verifier: {e}")))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    Ok(cfg)
}

/// Loads the Ed25519 grant-signing key (PKCS#8 PEM).
pub fn load_signing_key(path: &std::path::Path) -> Result<SigningKey, SetupError> {
    let pem = std::fs::read_to_string(path).map_err(|e| SetupError::Io {
        path: path.display().to_string(),
        source: e,
    })?;
    SigningKey::from_pkcs8_pem(&pem)
        .map_err(|e| SetupError::Invalid(format!("{}: {e}", path.display())))
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    #[error("protocol: {0}")]
    Protocol(String),
    #[error("refused: {0}")]
    Refused(String),
    #[error("signing: {0}")]
    Sign(String),
}

/// Serves agents on `listener` until `shutdown` turns true.
pub fn serve_agents(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    store: Store,
    key: SigningKey,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let acceptor = TlsAcceptor::from(Arc::new(tls));
    let key = Arc::new(key);
    crate::agents::SERVING_AGENTS.store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving the agent channel");
        }
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "agent accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => break,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let store = store.clone();
            let key = key.clone();
            let sd = shutdown.clone();
            tokio::spawn(async move {
                match connection(acceptor, tcp, store, key, sd).await {
                    Ok(agent) => tracing::info!(%peer, %agent, "agent connection closed"),
                    Err(e) => tracing::warn!(%peer, reason = %e, "agent connection closed"),
                }
            });
        }
    })
}

/// The agent id in a certificate's SAN URI, and the certificate's SHA-256.
fn identify(der: &[u8]) -> Result<(Uuid, String), ConnError> {
    let fp = hex::encode(Sha256::digest(der));
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| ConnError::Refused(format!("unparsable client certificate: {e}")))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| ConnError::Refused(format!("bad SAN extension: {e}")))?
        .ok_or_else(|| ConnError::Refused("client certificate has no SAN".into()))?;
    for n in &san.value.general_names {
        if let x509_parser::extensions::GeneralName::URI(u) = n
            && let Some(id) = u.strip_prefix(AGENT_URI_PREFIX)
        {
            let id = Uuid::parse_str(id)
                .map_err(|_| ConnError::Refused(format!("bad agent id in SAN: {u}")))?;
            return Ok((id, fp));
        }
    }
    Err(ConnError::Refused(
        "client certificate carries no agent id".into(),
    ))
}

struct Conn {
    store: Store,
    key: Arc<SigningKey>,
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
}

async fn connection(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    store: Store,
    key: Arc<SigningKey>,
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
    let (agent, fp) = identify(&der)?;
    let row = store
        .agent_by_fingerprint(&fp)
        .await?
        .ok_or_else(|| ConnError::Refused(format!("agent {agent}: unknown certificate")))?;
    if row.id != agent.to_string() {
        return Err(ConnError::Refused(format!(
            "certificate of agent {} claims agent {agent}",
            row.id
        )));
    }
    if row.status != "active" {
        return Err(ConnError::Refused(format!(
            "agent {agent} (VM {}) is {}",
            row.vm, row.status
        )));
    }
    let (rd, mut wr) = tokio::io::split(tls);
    // Reader task: frames in, in order; a bad frame ends it with the error.
    let (tx, mut rx) = mpsc::channel::<Result<AgentMsg, FrameError>>(64);
    let reader = tokio::spawn(async move {
        let mut rd = rd;
        loop {
            match read_frame::<_, AgentMsg>(&mut rd).await {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    break;
                }
            }
        }
    });
    let res = async {
        let hello = tokio::time::timeout(HELLO_TIMEOUT, rx.recv())
            .await
            .map_err(|_| ConnError::Protocol("no Hello within 10 s".into()))?
            .ok_or_else(|| ConnError::Protocol("closed before Hello".into()))??;
        let AgentMsg::Hello {
            agent_id,
            version,
            seq_high_water,
            audit_acked,
        } = hello
        else {
            return Err(ConnError::Protocol("first message is not Hello".into()));
        };
        if agent_id != agent {
            return Err(ConnError::Refused(format!(
                "Hello names agent {agent_id}, the certificate {agent}"
            )));
        }
        tracing::info!(%agent, vm = %row.vm, %version, seq_high_water, audit_acked, "agent connected");
        let mut c = Conn {
            store: store.clone(),
            key,
            agent,
            agent_s: agent.to_string(),
            vm: row.vm.clone(),
            cursor: i64::try_from(seq_high_water).unwrap_or(i64::MAX),
            audit_acked,
            policy_seq: -1,
            requests: HashMap::new(),
        };
        c.store.agent_seen(&c.agent_s, None).await?;
        let _live = crate::agents::LiveGuard::new(&c.agent_s);
        // Subscribe before reading the outbox, so no commit in between is missed.
        let mut outbox = crate::store::outbox_watch();
        outbox.mark_unchanged();
        let mut policy = crate::store::policy_watch();
        policy.mark_unchanged();
        send(
            &mut wr,
            &ControllerMsg::Welcome {
                agent_id: agent,
                controller_unix_ms: now_ms(),
            },
        )
        .await?;
        c.send_policy(&mut wr).await?;
        c.send_outbox(&mut wr, true).await?;
        let now = now_ms();
        let mut grant_ids = Vec::new();
        for (g, _) in c.store.active_grants(&c.vm, now).await? {
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
        let mut last_heard = tokio::time::Instant::now();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.reset();
        let mut status = tokio::time::interval(STATUS_EVERY);
        let mut nonce = 0u64;
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { return Ok(()) };
                    let m = m?;
                    last_heard = tokio::time::Instant::now();
                    c.handle(&mut wr, m).await?;
                }
                r = outbox.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    c.send_outbox(&mut wr, false).await?;
                }
                r = policy.changed() => {
                    if r.is_err() {
                        return Ok(());
                    }
                    c.send_policy(&mut wr).await?;
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= IDLE_LIMIT {
                        return Err(ConnError::Protocol(format!(
                            "agent silent for {} s", IDLE_LIMIT.as_secs())));
                    }
                    nonce += 1;
                    send(&mut wr, &ControllerMsg::Ping { nonce }).await?;
                }
                _ = status.tick() => {
                    match c.store.agent_status(&c.agent_s).await? {
                        Some(s) if s == "active" => {}
                        other => {
                            return Err(ConnError::Refused(format!(
                                "agent {} is now {}", c.agent, other.as_deref().unwrap_or("unknown"))));
                        }
                    }
                }
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
    async fn send_policy(&mut self, wr: &mut Wr) -> Result<(), ConnError> {
        let (group, _) = self.store.vm(&self.vm).await?;
        let seq = self.store.policy_version(&self.vm, &group).await?;
        if seq == self.policy_seq {
            return Ok(());
        }
        self.policy_seq = seq;
        let mut ports: Vec<ProtectedPort> = Vec::new();
        if let Some(p) = self.store.effective_policy(&self.vm, &group).await? {
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
            issued_unix_ms: now_ms(),
        };
        let s = Signed::sign(&body, &self.key).map_err(|e| ConnError::Sign(e.to_string()))?;
        tracing::debug!(agent = %self.agent, seq, ports = body.ports.len(), "policy sent");
        send(wr, &ControllerMsg::Policy(s)).await
    }

    async fn request_info(&mut self, rid: &str, gid: &str) -> Result<(String, String), ConnError> {
        if let Some(x) = self.requests.get(rid) {
            return Ok(x.clone());
        }
        let (_, who, why) = self
            .store
            .grant_context(gid)
            .await?
            .unwrap_or_else(|| (String::new(), String::new(), String::new()));
        self.requests
            .insert(rid.to_string(), (who.clone(), why.clone()));
        Ok((who, why))
    }

    /// Sends the VM's outbox rows after the cursor, in seq order. On the first send after
    /// (re)connect, grants that are no longer active (revoked, superseded, expired meanwhile)
    /// are not sent; their revocations are.
    async fn send_outbox(&mut self, wr: &mut Wr, catch_up: bool) -> Result<(), ConnError> {
        loop {
            let items = self
                .store
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
                if it.op == "revoke" {
                    let state = self
                        .store
                        .grant_context(&it.grant_id)
                        .await?
                        .map(|x| x.0)
                        .unwrap_or_default();
                    let reason = if state == "superseded" {
                        "NewerRequestInitiated"
                    } else {
                        "UserRequested"
                    };
                    let body = RevokeBody {
                        agent_id: self.agent,
                        grant_id,
                        seq: useq,
                        reason: reason.into(),
                    };
                    let s = Signed::sign(&body, &self.key)
                        .map_err(|e| ConnError::Sign(e.to_string()))?;
                    tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, reason, "revoke sent");
                    send(wr, &ControllerMsg::Revoke(s)).await?;
                    continue;
                }
                let now = now_ms();
                if it.end_ms <= now {
                    tracing::debug!(grant = %grant_id, seq, "grant ended before delivery; not sent");
                    continue;
                }
                if catch_up {
                    let state = self
                        .store
                        .grant_context(&it.grant_id)
                        .await?
                        .map(|x| x.0)
                        .unwrap_or_default();
                    if state != "pending" && state != "applied" {
                        tracing::debug!(grant = %grant_id, seq, %state, "grant no longer active; not sent");
                        continue;
                    }
                }
                let protocol = match it.protocol.parse::<Protocol>() {
                    Ok(p) => p,
                    Err(_) => {
                        tracing::error!(grant = %grant_id, protocol = %it.protocol, "bad stored protocol");
                        continue;
                    }
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
                let s =
                    Signed::sign(&body, &self.key).map_err(|e| ConnError::Sign(e.to_string()))?;
                tracing::info!(agent = %self.agent, vm = %self.vm, grant = %grant_id, seq, "grant sent");
                send(wr, &ControllerMsg::Grant(s)).await?;
            }
            if (n as i64) < OUTBOX_BATCH {
                return Ok(());
            }
        }
    }

    /// Records the acknowledgement without waiting for its commit, so that one agent's
    /// acknowledgements share group commits (the store's acknowledgement writer). If the
    /// commit fails the grant stays pending, and the agent's next connection redelivers it
    /// and acknowledges it again.
    fn ack(&self, grant_id: Uuid) {
        let actor = Actor {
            name: format!("agent:{}", self.agent),
            address: "agent-channel".into(),
        };
        let (store, agent) = (self.store.clone(), self.agent);
        tokio::spawn(async move {
            match store.ack_grant(&actor, &grant_id.to_string()).await {
                Ok(()) => {}
                Err(StoreError::Api(e)) => {
                    tracing::warn!(%agent, grant = %grant_id, error = %e.message, "acknowledgement of an unknown grant");
                }
                Err(e) => {
                    tracing::error!(%agent, grant = %grant_id, error = %e, "acknowledgement not recorded; the grant is redelivered on the next connection");
                }
            }
        });
    }

    async fn handle(&mut self, wr: &mut Wr, m: AgentMsg) -> Result<(), ConnError> {
        match m {
            AgentMsg::Hello { .. } => {
                return Err(ConnError::Protocol("a second Hello".into()));
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
                Outcome::Rejected { reason } => {
                    tracing::warn!(agent = %self.agent, grant = %grant_id, seq, %reason, "grant rejected by the agent");
                    self.store
                        .log_agent(
                            &self.agent_s,
                            &self.vm,
                            op::AGENT_REJECT,
                            "Failed",
                            "",
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
                    self.store
                        .log_agent(
                            &self.agent_s,
                            &self.vm,
                            op::AGENT_RESULT,
                            "Failed",
                            "",
                            serde_json::json!({"kind": "revoke", "grantId": grant_id.to_string(), "seq": seq, "reason": reason}),
                        )
                        .await?;
                } else {
                    tracing::info!(agent = %self.agent, grant = %grant_id, seq, "revocation applied");
                }
            }
            AgentMsg::PolicyResult { seq, outcome } => {
                if let Outcome::Rejected { reason } = outcome {
                    tracing::warn!(agent = %self.agent, seq, %reason, "policy rejected by the agent");
                    self.store
                        .log_agent(
                            &self.agent_s,
                            &self.vm,
                            op::AGENT_RESULT,
                            "Failed",
                            "",
                            serde_json::json!({"kind": "policy", "seq": seq, "reason": reason}),
                        )
                        .await?;
                } else {
                    tracing::info!(agent = %self.agent, seq, "policy applied");
                }
            }
            AgentMsg::Grants { grants } => self.report(grants).await?,
            AgentMsg::Audit { records } => {
                let up_to = self.audit(&records).await?;
                send(wr, &ControllerMsg::AuditAck { up_to }).await?;
            }
            AgentMsg::Heartbeat(h) => {
                let hb = HeartbeatJson::from_agent(&h, None, now_ms());
                self.store.agent_seen(&self.agent_s, Some(&hb)).await?;
                return Ok(());
            }
            AgentMsg::Status(r) => {
                let hb = HeartbeatJson::from_agent(&r.heartbeat, Some(&r), now_ms());
                self.store.agent_seen(&self.agent_s, Some(&hb)).await?;
                return Ok(());
            }
            AgentMsg::Pong { .. } => self.store.agent_seen(&self.agent_s, None).await?,
        }
        Ok(())
    }

    /// The agent's report of every grant it holds: controller grants still pending here are
    /// acknowledged (a lost ack); local break-glass grants are recorded once each.
    async fn report(&mut self, grants: Vec<ReportedGrant>) -> Result<(), ConnError> {
        let pending: Vec<String> = self
            .store
            .active_grants(&self.vm, now_ms())
            .await?
            .into_iter()
            .filter(|(_, s)| s == "pending")
            .map(|(g, _)| g)
            .collect();
        for g in &grants {
            let gid = g.grant_id.to_string();
            if g.origin == "local" {
                let new = self
                    .store
                    .record_local_grant(
                        &self.agent_s,
                        &self.vm,
                        &gid,
                        serde_json::json!({
                            "grantId": gid,
                            "origin": "local",
                            "protocol": g.protocol.to_string(),
                            "number": g.port.get(),
                            "allowedSourceAddressPrefix": g.source.to_string(),
                            "endTimeUtc": crate::model::fmt_time(g.end_unix_ms),
                            "requestor": g.requester,
                        }),
                    )
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

    async fn audit(&mut self, records: &[AuditRecord]) -> Result<u64, ConnError> {
        let up_to = self
            .store
            .store_audit(&self.agent_s, self.audit_acked, records)
            .await?;
        self.audit_acked = up_to;
        tracing::debug!(agent = %self.agent, records = records.len(), up_to, "audit records stored");
        Ok(up_to)
    }
}
