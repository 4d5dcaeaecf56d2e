//! The agent fleet in the database: enrolment tokens, enrolled agents (their certificates,
//! status, last heartbeat), the audit records they deliver, and their local break-glass
//! grants. See docs/controller.md ("Agents").

use jitgate_api::ErrorCode;
use rand::RngCore;
use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::auth::Scope;
use crate::error::{ApiError, SetupError, StoreError};
use crate::model::{fmt_time, now_ms};
use crate::store::{Actor, NewActivity, Store, op};
use jitgate_api::{Agent as AgentJson, AgentConnection, AgentStatus, EnrollRequest};

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Prefix of enrolment tokens: `jitenroll_` + 64 hex digits.
pub const ENROLL_PREFIX: &str = "jitenroll_";
/// Lifetime of an enrolment token.
pub const ENROLL_TTL_MS: i64 = 24 * 3600 * 1000;
/// Lifetime of an agent certificate.
const AGENT_CERT_DAYS: i64 = 825;
/// An agent is shown online if it spoke within this long (heartbeats every 10 s, pings 15 s).
pub const ONLINE_WITHIN_MS: i64 = 45_000;

/// The SAN URI prefix that carries an agent's id in its certificate.
pub const AGENT_URI_PREFIX: &str = "urn:jitgate:agent:";

fn hash_token(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

fn plausible_enroll_token(t: &str) -> bool {
    t.strip_prefix(ENROLL_PREFIX).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// The controller CA, loaded to sign agent certificates.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
}

impl Ca {
    pub fn load(cert: &std::path::Path, key: &std::path::Path) -> Result<Ca, SetupError> {
        let read = |p: &std::path::Path| {
            std::fs::read_to_string(p).map_err(|e| SetupError::Io {
                path: p.display().to_string(),
                source: e,
            })
        };
        let pem = read(cert)?;
        let key = KeyPair::from_pem(&read(key)?)?;
        // Re-issued from the same parameters and key: same subject and key identifier, so
        // certificates it signs chain to the CA certificate on disk.
        let params = CertificateParams::from_ca_cert_pem(&pem)?;
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key, pem })
    }

    /// Signs an agent's CSR: only its public key is taken; subject, SAN (the agent id),
    /// usages and validity are the controller's.
    pub fn sign_agent(&self, csr_pem: &str, agent: uuid::Uuid) -> Result<Signed, String> {
        let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| format!("the CSR is not a valid PEM certificate request: {e}"))?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name
            .push(DnType::CommonName, format!("jitgate agent {agent}"));
        let uri = rcgen::Ia5String::try_from(format!("{AGENT_URI_PREFIX}{agent}"))
            .map_err(|e| e.to_string())?;
        p.subject_alt_names = vec![SanType::URI(uri)];
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(AGENT_CERT_DAYS);
        let mut serial = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut serial);
        serial[0] &= 0x7f;
        p.serial_number = Some(SerialNumber::from_slice(&serial));
        csr.params = p;
        let cert = csr
            .signed_by(&self.cert, &self.key)
            .map_err(|e| format!("signing the certificate: {e}"))?;
        Ok(Signed {
            fingerprint: hex::encode(Sha256::digest(cert.der())),
            serial: hex::encode(serial),
            pem: cert.pem(),
        })
    }
}

pub struct Signed {
    pub fingerprint: String,
    pub serial: String,
    pub pem: String,
}

/// An enrolled agent as stored.
#[derive(Clone, Debug)]
pub struct AgentRow {
    pub id: String,
    pub vm: String,
    pub status: String,
}

/// A heartbeat as stored (JSON). Fields after `received_time_utc` come from status reports
/// (`AgentMsg::Status`); absent in rows written from older agents' heartbeats.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatJson {
    pub interfaces: Vec<String>,
    pub protected_ports: Vec<String>,
    pub listening: Vec<String>,
    pub active_grants: u32,
    pub audit_head: String,
    pub audit_seq: u64,
    pub received_time_utc: String,
    /// True when the agent sent a status report (enforcement state below is known).
    #[serde(default)]
    pub status_reported: bool,
    /// Listening sockets, parsed.
    #[serde(default)]
    pub listening_sockets: Vec<SocketJson>,
    /// Non-loopback interfaces that have an address and no enforcement.
    #[serde(default)]
    pub unattached: Vec<UnattachedJson>,
    /// Problems with the program, its maps or links, as the agent found them.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Agent wall clock minus controller wall clock at receipt (transit delay included).
    #[serde(default)]
    pub clock_offset_ms: Option<i64>,
    /// When the controller received it (ms since the epoch).
    #[serde(default)]
    pub received_ms: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SocketJson {
    /// TCP | UDP
    pub protocol: String,
    /// The bound address (`0.0.0.0` / `::` for a wildcard bind).
    pub address: String,
    pub port: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UnattachedJson {
    pub interface: String,
    pub addresses: Vec<String>,
}

impl HeartbeatJson {
    /// Parses what an agent sent, once, into the stored form: a status report, or (from an
    /// older agent) a bare heartbeat.
    pub fn from_agent(
        h: &jitgate_proto::message::Heartbeat,
        status: Option<&jitgate_proto::message::StatusReport>,
        now: i64,
    ) -> HeartbeatJson {
        let listening_sockets = h
            .listening
            .iter()
            .filter_map(|(p, a)| {
                let sa: std::net::SocketAddr = a.parse().ok()?;
                Some(SocketJson {
                    protocol: p.to_string().to_uppercase(),
                    address: jitgate_common::net::normalise(sa.ip()).to_string(),
                    port: sa.port(),
                })
            })
            .collect();
        let mut unattached: Vec<UnattachedJson> = Vec::new();
        if let Some(st) = status {
            for (iface, addr) in &st.addresses {
                if h.interfaces.iter().any(|(n, _)| n == iface) {
                    continue;
                }
                match unattached.iter_mut().find(|u| &u.interface == iface) {
                    Some(u) => u.addresses.push(addr.clone()),
                    None => unattached.push(UnattachedJson {
                        interface: iface.clone(),
                        addresses: vec![addr.clone()],
                    }),
                }
            }
        }
        HeartbeatJson {
            interfaces: h
                .interfaces
                .iter()
                .map(|(n, m)| format!("{n} ({m})"))
                .collect(),
            protected_ports: h.protected.iter().map(|p| p.to_string()).collect(),
            listening: h
                .listening
                .iter()
                .map(|(p, a)| format!("{p} {a}"))
                .collect(),
            active_grants: h.active_grants,
            audit_head: h.audit_head.clone(),
            audit_seq: h.audit_seq,
            received_time_utc: fmt_time(now),
            status_reported: status.is_some(),
            listening_sockets,
            unattached,
            problems: status.map(|s| s.problems.clone()).unwrap_or_default(),
            clock_offset_ms: status.map(|s| s.agent_unix_ms - now),
            received_ms: Some(now),
        }
    }

    /// Why enforcement is not whole on this VM, or cannot be confirmed because reports
    /// stopped (empty: whole, or never reported).
    pub fn problems_at(&self, now: i64) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(r) = self.received_ms
            && now - r > ONLINE_WITHIN_MS
        {
            out.push(format!(
                "no status report since {} (the agent is connected but not reporting)",
                fmt_time(r)
            ));
        }
        if !self.status_reported {
            return out;
        }
        out.extend(self.problems.iter().cloned());
        if self.interfaces.is_empty() {
            out.push("enforcement detached: the program is attached to no interface".into());
        }
        for u in &self.unattached {
            out.push(format!(
                "{} has an address ({}) and no enforcement",
                u.interface,
                u.addresses.join(", ")
            ));
        }
        out
    }
}

/// Agents with a live channel connection in this process (counted: a reconnect may overlap
/// the old connection's end).
static LIVE: std::sync::LazyLock<std::sync::Mutex<std::collections::HashMap<String, usize>>> =
    std::sync::LazyLock::new(Default::default);

/// Marks an agent connected until dropped.
pub struct LiveGuard(String);

impl LiveGuard {
    pub fn new(agent: &str) -> LiveGuard {
        if let Ok(mut m) = LIVE.lock() {
            *m.entry(agent.to_string()).or_default() += 1;
        }
        LiveGuard(agent.to_string())
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        if let Ok(mut m) = LIVE.lock()
            && let Some(n) = m.get_mut(&self.0)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.0);
            }
        }
    }
}

/// Set once this process serves the agent channel: from then on a live connection, not a
/// recent `last_seen`, says whether an agent is online.
pub static SERVING_AGENTS: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Whether the agent has a live connection to this controller process.
pub fn is_live(agent: &str) -> bool {
    LIVE.lock().map(|m| m.contains_key(agent)).unwrap_or(false)
}

/// Connected to this process (when it serves agents), else heard from within
/// `ONLINE_WITHIN_MS` (administration commands run in another process).
pub fn online(id: &str, last_seen: Option<i64>, now: i64) -> bool {
    if SERVING_AGENTS.load(std::sync::atomic::Ordering::Relaxed) {
        is_live(id)
    } else {
        last_seen.is_some_and(|l| now - l <= ONLINE_WITHIN_MS)
    }
}

/// A VM's agent as the fleet view and compliance see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AgentState {
    /// Connected (or spoke recently) and enforcement whole.
    Online,
    /// Connected, but enforcement detached, partial or the program unhealthy.
    Degraded,
    /// Neither connected nor heard from within `ONLINE_WITHIN_MS`.
    Offline,
    Revoked,
}

impl AgentState {
    /// As the API shows it.
    pub fn connection(self) -> AgentConnection {
        match self {
            AgentState::Online => AgentConnection::Online,
            AgentState::Degraded => AgentConnection::Degraded,
            AgentState::Offline => AgentConnection::Offline,
            AgentState::Revoked => AgentConnection::Revoked,
        }
    }

    pub fn of(
        id: &str,
        status: &str,
        last_seen: Option<i64>,
        hb: Option<&HeartbeatJson>,
        now: i64,
    ) -> AgentState {
        if status != "active" {
            AgentState::Revoked
        } else if !online(id, last_seen, now) {
            AgentState::Offline
        } else if hb.is_some_and(|h| !h.problems_at(now).is_empty()) {
            AgentState::Degraded
        } else {
            AgentState::Online
        }
    }
}

/// The latest state of each VM's active agent, by VM name.
#[derive(Clone, Debug)]
pub struct AgentRecord {
    pub id: String,
    pub last_seen_ms: Option<i64>,
    pub heartbeat: Option<HeartbeatJson>,
}

impl Store {
    /// Issues a one-time enrolment token for a VM; returns it (shown once) and its expiry.
    pub async fn create_enroll_token(&self, actor: &Actor, vm: &str) -> Result<(String, i64)> {
        let (group, _) = self.vm(vm).await?;
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let token = format!("{ENROLL_PREFIX}{}", hex::encode(raw));
        let mut w = self.begin_write().await?;
        let expires = w.now + ENROLL_TTL_MS;
        sqlx::query(
            "INSERT INTO enroll_tokens (hash, vm, created_ms, expires_ms, used_ms, agent_id) \
             VALUES ($1, $2, $3, $4, NULL, NULL)",
        )
        .bind(hash_token(&token))
        .bind(vm)
        .bind(w.now)
        .bind(expires)
        .execute(&mut *w.tx)
        .await?;
        w.log(NewActivity {
            operation: op::CREATE_ENROLL_TOKEN,
            resource_type: "VirtualMachine",
            resource_group: &group,
            vm,
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"expiresTimeUtc": fmt_time(expires)}),
        })
        .await?;
        w.commit().await?;
        Ok((token, expires))
    }

    /// Records a failed enrolment in the activity log (and nothing else).
    async fn enroll_failed(&self, actor: &Actor, vm: &str, group: &str, why: &str) -> Result<()> {
        let mut w = self.begin_write().await?;
        w.log(NewActivity {
            operation: op::ENROLL_AGENT,
            resource_type: "VirtualMachine",
            resource_group: group,
            vm,
            actor,
            outcome: "Failed",
            request_id: "",
            details: serde_json::json!({"reason": why}),
        })
        .await?;
        w.commit().await
    }

    /// Enrols an agent: checks the one-time token, signs the CSR, records the agent (revoking
    /// an earlier agent of the same VM), marks the token used. On any failure nothing but an
    /// activity log entry is written.
    pub async fn enroll(
        &self,
        caller_address: &str,
        req: &EnrollRequest,
        ca: &Ca,
    ) -> Result<(uuid::Uuid, String, Signed)> {
        let actor = Actor {
            name: "agent-enrollment".into(),
            address: caller_address.into(),
        };
        let invalid = || {
            ApiError::new(
                axum::http::StatusCode::UNAUTHORIZED,
                ErrorCode::InvalidEnrollmentToken,
                "the enrollment token is unknown, expired or already used",
            )
        };
        if !plausible_enroll_token(&req.token) {
            self.enroll_failed(&actor, "", "", "malformed enrollment token")
                .await?;
            return Err(invalid().into());
        }
        let hash = hash_token(&req.token);
        let mut w = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT t.vm, t.expires_ms, t.used_ms, v.resource_group FROM enroll_tokens t \
             JOIN vms v ON v.name = t.vm WHERE t.hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&mut *w.tx)
        .await?;
        let (vm, group, why) = match &row {
            None => (
                String::new(),
                String::new(),
                Some("unknown enrollment token"),
            ),
            Some(r) => {
                let expires: i64 = r.try_get(1)?;
                let used: Option<i64> = r.try_get(2)?;
                let why = if used.is_some() {
                    Some("enrollment token already used")
                } else if expires <= w.now {
                    Some("enrollment token expired")
                } else {
                    None
                };
                (r.try_get(0)?, r.try_get(3)?, why)
            }
        };
        let fail = |why: String| NewActivity {
            operation: op::ENROLL_AGENT,
            resource_type: "VirtualMachine",
            resource_group: "",
            vm: "",
            actor: &actor,
            outcome: "Failed",
            request_id: "",
            details: serde_json::json!({ "reason": why }),
        };
        if let Some(why) = why {
            w.log(NewActivity {
                resource_group: &group,
                vm: &vm,
                ..fail(why.into())
            })
            .await?;
            w.commit().await?;
            tracing::warn!(%vm, address = caller_address, reason = why, "enrolment refused");
            return Err(invalid().into());
        }
        let id = uuid::Uuid::new_v4();
        let signed = match ca.sign_agent(&req.csr_pem, id) {
            Ok(s) => s,
            Err(e) => {
                w.log(NewActivity {
                    resource_group: &group,
                    vm: &vm,
                    ..fail(format!("bad CSR: {e}"))
                })
                .await?;
                w.commit().await?;
                tracing::warn!(%vm, address = caller_address, error = %e, "enrolment refused: bad CSR");
                return Err(ApiError::bad_request(ErrorCode::InvalidCsr, e).into());
            }
        };
        let revoked = sqlx::query(
            "UPDATE agents SET status = 'revoked', revoked_ms = $1 WHERE vm = $2 AND status = 'active'",
        )
        .bind(w.now)
        .bind(&vm)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        sqlx::query(
            "INSERT INTO agents (id, vm, cert_fingerprint, cert_serial, status, enrolled_ms, \
             revoked_ms, last_seen_ms, heartbeat, cert_pem) VALUES ($1, $2, $3, $4, 'active', $5, NULL, NULL, NULL, $6)",
        )
        .bind(id.to_string())
        .bind(&vm)
        .bind(&signed.fingerprint)
        .bind(&signed.serial)
        .bind(w.now)
        .bind(&signed.pem)
        .execute(&mut *w.tx)
        .await?;
        sqlx::query("UPDATE enroll_tokens SET used_ms = $1, agent_id = $2 WHERE hash = $3")
            .bind(w.now)
            .bind(id.to_string())
            .bind(&hash)
            .execute(&mut *w.tx)
            .await?;
        w.log(NewActivity {
            operation: op::ENROLL_AGENT,
            resource_type: "VirtualMachine",
            resource_group: &group,
            vm: &vm,
            actor: &actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({"agentId": id.to_string(),
                "certificateSerial": signed.serial, "previousAgentsRevoked": revoked}),
        })
        .await?;
        w.commit().await?;
        tracing::info!(%vm, agent = %id, address = caller_address, "agent enrolled");
        Ok((id, vm, signed))
    }

    /// Revokes every active agent of a VM; returns their ids. Their credentials are refused
    /// from then on (a live connection is closed within seconds).
    pub async fn revoke_agents(&self, actor: &Actor, vm: &str) -> Result<Vec<String>> {
        let (group, _) = self.vm(vm).await?;
        let mut w = self.begin_write().await?;
        let rows = sqlx::query("SELECT id FROM agents WHERE vm = $1 AND status = 'active'")
            .bind(vm)
            .fetch_all(&mut *w.tx)
            .await?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        if ids.is_empty() {
            return Err(ApiError::not_found(
                ErrorCode::AgentNotFound,
                format!("VM {vm} has no active agent"),
            )
            .into());
        }
        sqlx::query(
            "UPDATE agents SET status = 'revoked', revoked_ms = $1 WHERE vm = $2 AND status = 'active'",
        )
        .bind(w.now)
        .bind(vm)
        .execute(&mut *w.tx)
        .await?;
        w.log(NewActivity {
            operation: op::REVOKE_AGENT,
            resource_type: "VirtualMachine",
            resource_group: &group,
            vm,
            actor,
            outcome: "Succeeded",
            request_id: "",
            details: serde_json::json!({ "agentIds": ids }),
        })
        .await?;
        w.commit().await?;
        Ok(ids)
    }

    /// The agent holding a certificate (by the SHA-256 of its DER).
    pub async fn agent_by_fingerprint(&self, fp: &str) -> Result<Option<AgentRow>> {
        let row = sqlx::query("SELECT id, vm, status FROM agents WHERE cert_fingerprint = $1")
            .bind(fp)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| {
            Ok(AgentRow {
                id: r.try_get(0)?,
                vm: r.try_get(1)?,
                status: r.try_get(2)?,
            })
        })
        .transpose()
    }

    pub async fn agent_status(&self, id: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT status FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(self.pool())
            .await?;
        row.map(|r| r.try_get(0).map_err(StoreError::from))
            .transpose()
    }

    /// Updates last_seen (and the last heartbeat, if given). Not in the activity log.
    pub async fn agent_seen(&self, id: &str, heartbeat: Option<&HeartbeatJson>) -> Result<()> {
        let mut w = self.begin_write().await?;
        match heartbeat {
            Some(h) => {
                sqlx::query("UPDATE agents SET last_seen_ms = $1, heartbeat = $2 WHERE id = $3")
                    .bind(w.now)
                    .bind(serde_json::to_string(h)?)
                    .bind(id)
                    .execute(&mut *w.tx)
                    .await?;
            }
            None => {
                sqlx::query("UPDATE agents SET last_seen_ms = $1 WHERE id = $2")
                    .bind(w.now)
                    .bind(id)
                    .execute(&mut *w.tx)
                    .await?;
            }
        }
        w.commit().await
    }

    /// An activity log entry about an agent's VM (results, rejections, reports).
    pub async fn log_agent(
        &self,
        agent: &str,
        vm: &str,
        operation: &'static str,
        outcome: &str,
        request_id: &str,
        details: serde_json::Value,
    ) -> Result<()> {
        let group = self.vm(vm).await.map(|(g, _)| g).unwrap_or_default();
        let actor = Actor {
            name: format!("agent:{agent}"),
            address: "agent-channel".into(),
        };
        let mut w = self.begin_write().await?;
        w.log(NewActivity {
            operation,
            resource_type: "VirtualMachine",
            resource_group: &group,
            vm,
            actor: &actor,
            outcome,
            request_id,
            details,
        })
        .await?;
        w.commit().await
    }

    /// Records a reported local (break-glass) grant once; true if it was new.
    pub async fn record_local_grant(
        &self,
        agent: &str,
        vm: &str,
        grant_id: &str,
        details: serde_json::Value,
    ) -> Result<bool> {
        let group = self.vm(vm).await.map(|(g, _)| g).unwrap_or_default();
        let actor = Actor {
            name: format!("agent:{agent}"),
            address: "agent-channel".into(),
        };
        let mut w = self.begin_write().await?;
        let n = sqlx::query(
            "INSERT INTO agent_local_grants (agent_id, grant_id, reported_ms) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(agent)
        .bind(grant_id)
        .bind(w.now)
        .execute(&mut *w.tx)
        .await?
        .rows_affected();
        if n == 0 {
            return Ok(false);
        }
        w.log(NewActivity {
            operation: op::LOCAL_ACCESS,
            resource_type: "VirtualMachine",
            resource_group: &group,
            vm,
            actor: &actor,
            outcome: "Succeeded",
            request_id: "",
            details,
        })
        .await?;
        w.commit().await?;
        Ok(true)
    }

    /// Stores audit records (each once per (agent, id)) and returns the highest seq up to
    /// which every seq after `acked` is stored.
    pub async fn store_audit(
        &self,
        agent: &str,
        acked: u64,
        records: &[jitgate_proto::message::AuditRecord],
    ) -> Result<u64> {
        let mut w = self.begin_write().await?;
        for r in records {
            let seq = i64::try_from(r.seq)
                .map_err(|_| StoreError::Corrupt("the agent sent an audit seq too large".into()))?;
            let f = crate::connections::RecordFields::of(&r.line);
            sqlx::query(
                "INSERT INTO agent_audit (agent_id, id, seq, line, received_ms, kind, at_ms, grant_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING",
            )
            .bind(agent)
            .bind(&r.id)
            .bind(seq)
            .bind(&r.line)
            .bind(w.now)
            .bind(f.kind)
            .bind(f.at_ms)
            .bind(f.grant_id)
            .execute(&mut *w.tx)
            .await?;
        }
        w.commit().await?;
        let mut up_to = acked;
        loop {
            let rows = sqlx::query(
                "SELECT DISTINCT seq FROM agent_audit WHERE agent_id = $1 AND seq > $2 ORDER BY seq LIMIT 1000",
            )
            .bind(agent)
            .bind(i64::try_from(up_to).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await?;
            let n = rows.len();
            for r in &rows {
                let s: i64 = r.try_get(0)?;
                if s as u64 == up_to + 1 {
                    up_to += 1;
                } else {
                    return Ok(up_to);
                }
            }
            if n < 1000 {
                return Ok(up_to);
            }
        }
    }

    /// The VM's policy version: the activity-log seq of the last change to its effective
    /// policy (its own or its group's); 0 if never set.
    pub async fn policy_version(&self, vm: &str, group: &str) -> Result<i64> {
        let row = sqlx::query(
            "SELECT MAX(seq) FROM activity WHERE operation IN ($1, $2) AND \
             ((resource_type = 'VirtualMachine' AND vm = $3) OR \
              (resource_type = 'ResourceGroup' AND resource_group = $4))",
        )
        .bind(op::UPDATE_POLICY)
        .bind(op::DELETE_POLICY)
        .bind(vm)
        .bind(group)
        .fetch_one(self.pool())
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?.unwrap_or(0))
    }

    /// Controller grants of a VM that are active (pending or applied, end in the future).
    pub async fn active_grants(&self, vm: &str, now: i64) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT id, state FROM grants WHERE vm = $1 AND state IN ('pending', 'applied') AND end_ms > $2",
        )
        .bind(vm)
        .bind(now)
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// A grant's state and its request's requestor and justification.
    pub async fn grant_context(&self, grant_id: &str) -> Result<Option<(String, String, String)>> {
        let row = sqlx::query(
            "SELECT g.state, r.requestor, r.justification FROM grants g \
             JOIN requests r ON r.id = g.request_id WHERE g.id = $1",
        )
        .bind(grant_id)
        .fetch_optional(self.pool())
        .await?;
        row.map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .transpose()
    }

    /// The fleet view, limited to the caller's scope.
    pub async fn list_agents(&self, scope: &Scope) -> Result<Vec<AgentJson>> {
        let rows = sqlx::query(
            "SELECT a.id, a.vm, v.resource_group, a.status, a.enrolled_ms, a.last_seen_ms, a.heartbeat, \
             (SELECT COUNT(*) FROM agent_audit x WHERE x.agent_id = a.id) \
             FROM agents a JOIN vms v ON v.name = a.vm ORDER BY a.vm, a.enrolled_ms",
        )
        .fetch_all(self.pool())
        .await?;
        let now = now_ms();
        let mut out = Vec::new();
        for r in &rows {
            let vm: String = r.try_get(1)?;
            let group: String = r.try_get(2)?;
            if !scope.covers_vm(&vm, &group) {
                continue;
            }
            let status: AgentStatus = r
                .try_get::<String, _>(3)?
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("{e}")))?;
            let last: Option<i64> = r.try_get(5)?;
            let hb: Option<String> = r.try_get(6)?;
            let hb: Option<HeartbeatJson> = hb.map(|h| serde_json::from_str(&h)).transpose()?;
            let id: String = r.try_get(0)?;
            let connection = AgentState::of(&id, status.as_str(), last, hb.as_ref(), now);
            out.push(AgentJson {
                virtual_machine: vm,
                resource_group: group,
                agent_id: id,
                status,
                connection: connection.connection(),
                problems: if connection == AgentState::Degraded {
                    hb.as_ref().map(|h| h.problems_at(now)).unwrap_or_default()
                } else {
                    Vec::new()
                },
                listening: hb.as_ref().map(|h| h.listening.clone()).unwrap_or_default(),
                clock_offset_ms: hb.as_ref().and_then(|h| h.clock_offset_ms),
                enrolled_time_utc: fmt_time(r.try_get(4)?),
                last_seen_time_utc: last.map(fmt_time),
                interfaces: hb
                    .as_ref()
                    .map(|h| h.interfaces.clone())
                    .unwrap_or_default(),
                protected_ports: hb
                    .as_ref()
                    .map(|h| h.protected_ports.clone())
                    .unwrap_or_default(),
                active_grants: hb.as_ref().map(|h| h.active_grants),
                audit_head: hb.as_ref().map(|h| h.audit_head.clone()),
                audit_seq: hb.as_ref().map(|h| h.audit_seq),
                audit_records: r.try_get(7)?,
            });
        }
        Ok(out)
    }

    /// The active agent of each VM (the newest enrolment), by VM name.
    pub async fn agent_records(&self) -> Result<std::collections::HashMap<String, AgentRecord>> {
        let rows = sqlx::query(
            "SELECT id, vm, last_seen_ms, heartbeat FROM agents WHERE status = 'active' \
             ORDER BY enrolled_ms",
        )
        .fetch_all(self.pool())
        .await?;
        let mut out = std::collections::HashMap::new();
        for r in &rows {
            let hb: Option<String> = r.try_get(3)?;
            out.insert(
                r.try_get::<String, _>(1)?,
                AgentRecord {
                    id: r.try_get(0)?,
                    last_seen_ms: r.try_get(2)?,
                    heartbeat: hb.map(|h| serde_json::from_str(&h)).transpose()?,
                },
            );
        }
        Ok(out)
    }
}
