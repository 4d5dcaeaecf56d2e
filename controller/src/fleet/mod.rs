//! The agent fleet (docs/controller.md, "Agents"): enrolment (one-time tokens, the CA signing
//! agent certificates), revocation, the fleet view, and what an agent's channel records
//! (last seen and status reports, results, break-glass grants, audit records).
//!
//! - [`ca`]: the controller CA as it signs agent certificates.
//! - [`reports`]: last seen and status reports, kept and written in batches.
//! - [`watch`]: agents going offline and coming back, told as notifications.

pub mod ca;
pub mod marks;
pub mod reports;
pub mod watch;

use jitgate_api::{
    ActivityOutcome, Agent, AgentConnection, AgentStatus, EnrollRequest, EnrollResponse, ErrorCode,
    Operation,
};
use jitgate_api::{GrantOrigin, InterfaceHook, MaxConnections};
use jitgate_proto::message::{AuditRecord, ReportedGrant};

use crate::authz::{self, Action, Actor, Caller};
use crate::error::{Error, Result};
use crate::fleet::ca::Ca;
use crate::ids;
use crate::presence::Presence;
use crate::store::activity::{self, NewActivity};
use crate::store::agents::{self, AgentIdentity, Heartbeat, NewAgent};
use crate::store::db::Db;
use crate::store::{agent_audit, inventory};

/// Lifetime of an enrolment token.
pub const ENROLL_TTL_MS: i64 = 24 * 3600 * 1000;

/// What enrolment hands out besides the certificate.
pub struct Enrollment {
    pub ca: Ca,
    /// SPKI PEM of the grant-signing public key.
    pub grant_signing_key_pem: String,
    /// host:port of this controller's agent channel.
    pub agent_endpoint: String,
    /// Every controller's (`agent_endpoints`, else this one's only).
    pub agent_endpoints: Vec<String>,
    /// Agent certificate lifetime (level 6 and later) and renewal grace.
    pub certs: ca::CertConfig,
}

/// A renewal the controller refused, with the reason told to the agent and logged.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] Error),
}

jitgate_api::wire_enum! {
    /// Why a certificate renewal was refused, as its activity entry says (`kind`); each kind
    /// is written at most once per agent and window.
    pub enum RefusalKind("renewal refusal") {
        /// Sooner than the window after the last renewal granted.
        RateLimited = "rateLimited",
        /// A request larger than `MAX_CERT_PEM`.
        TooLarge = "tooLarge",
        /// Not a valid certificate request.
        BadRequest = "badRequest",
        /// The request does not carry the key of the agent's certificate.
        KeyMismatch = "keyMismatch",
        /// The agent is revoked (or unknown).
        Revoked = "revoked",
        /// The certificate expired longer ago than the renewal grace (refused at the
        /// handshake).
        PastGrace = "pastGrace",
        /// The CA could not sign.
        Signing = "signing",
    }
}

/// One refused renewal, as [`Fleet::renewal_refused`] answers and logs it.
struct Refusal<'a> {
    agent: uuid::Uuid,
    vm: &'a str,
    group: &'a str,
    kind: RefusalKind,
    /// The reason, for the agent and the activity entry.
    why: String,
    window_ms: i64,
    /// Added to the activity entry's details.
    details: serde_json::Value,
}

/// The rate limit's refusal (the last renewal granted, at `last_ms`, is younger than the
/// window): the reason says when to retry.
fn rate_refusal<'a>(
    refusal: impl FnOnce(RefusalKind, String) -> Refusal<'a>,
    last_ms: i64,
) -> Refusal<'a> {
    let mut r = refusal(RefusalKind::RateLimited, String::new());
    let retry_ms = last_ms.saturating_add(r.window_ms);
    r.why = format!(
        "renewals are granted at most once every {} s (a tenth of the certificate \
         lifetime, [certificates] renewal_min_interval_seconds); the last was at {}: \
         retry after {}",
        r.window_ms / 1000,
        jitgate_api::time::format(last_ms),
        jitgate_api::time::format(retry_ms)
    );
    if let Some(d) = r.details.as_object_mut() {
        d.insert("rateLimited".into(), true.into());
    }
    r
}

/// Days in `d` (at least the seconds, for the short lifetimes of tests).
fn lifetime(d: std::time::Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

#[derive(Clone)]
pub struct Fleet {
    db: Db,
    presence: Presence,
    /// None where this controller does not enrol (administration commands).
    enrollment: Option<std::sync::Arc<Enrollment>>,
    /// Reports not yet written ([`reports::spawn`] writes them).
    reports: std::sync::Arc<reports::Reports>,
}

impl Fleet {
    pub fn new(db: Db, presence: Presence, enrollment: Option<Enrollment>) -> Fleet {
        Fleet {
            db,
            presence,
            enrollment: enrollment.map(std::sync::Arc::new),
            reports: std::sync::Arc::default(),
        }
    }

    /// Issues a one-time enrolment token for a VM; returns it (shown once) and its expiry.
    pub async fn create_enroll_token(&self, caller: &Caller, vm: &str) -> Result<(String, i64)> {
        authz::authorize(caller, Action::Administer)?;
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        let token = ids::new_enroll_token();
        let mut w = self.db.begin().await?;
        let expires = w.now + ENROLL_TTL_MS;
        agents::insert_enroll_token(&mut w, &ids::hash_token(&token), vm, expires).await?;
        activity::log(
            &mut w,
            NewActivity::vm(Operation::CreateEnrollToken, &group, vm, &caller.actor())
                .details(serde_json::json!({"expiresTimeUtc": jitgate_api::time::format(expires)})),
        )
        .await?;
        w.commit().await?;
        Ok((token, expires))
    }

    /// Records a refused enrolment in the activity log (and nothing else).
    async fn refused(&self, actor: &Actor, vm: &str, group: &str, why: &str) -> Result<()> {
        let mut w = self.db.begin().await?;
        activity::log(&mut w, failed_enrolment(actor, vm, group, why)).await?;
        w.commit().await
    }

    /// Enrols an agent: checks the one-time token (which authenticates: no API token), signs
    /// the CSR, records the agent (revoking an earlier agent of the same VM), marks the token
    /// used. On any failure nothing but an activity log entry is written.
    pub async fn enroll(
        &self,
        caller_address: &str,
        req: &EnrollRequest,
    ) -> Result<EnrollResponse> {
        let Some(en) = &self.enrollment else {
            return Err(Error::Unavailable("this controller does not enrol agents"));
        };
        let actor = Actor::enrollment(caller_address);
        let invalid = || {
            Error::refused(
                ErrorCode::InvalidEnrollmentToken,
                "the enrollment token is unknown, expired or already used",
            )
        };
        if !ids::plausible_enroll_token(&req.token) {
            self.refused(&actor, "", "", "malformed enrollment token")
                .await?;
            return Err(invalid());
        }
        let hash = ids::hash_token(&req.token);
        let mut w = self.db.begin().await?;
        let row = agents::enroll_token(&mut w, &hash).await?;
        let (vm, group, why) = match &row {
            None => (
                String::new(),
                String::new(),
                Some("unknown enrollment token"),
            ),
            Some(t) => {
                let why = if t.used_ms.is_some() {
                    Some("enrollment token already used")
                } else if t.expires_ms <= w.now {
                    Some("enrollment token expired")
                } else {
                    None
                };
                (t.vm.clone(), t.resource_group.clone(), why)
            }
        };
        if let Some(why) = why {
            activity::log(&mut w, failed_enrolment(&actor, &vm, &group, why)).await?;
            w.commit().await?;
            tracing::warn!(%vm, address = caller_address, reason = why, "enrolment refused");
            return Err(invalid());
        }
        let id = uuid::Uuid::new_v4();
        // Only an agent that renews over the channel gets a short-lived certificate: an older
        // one could not renew it and would need re-enrolment when it expires.
        let days = match req.protocol {
            Some(p) if p >= jitgate_proto::LEVEL_CERT_RENEWAL => {
                lifetime(en.certs.agent_lifetime())
            }
            _ => time::Duration::days(ca::LONG_AGENT_CERT_DAYS),
        };
        let signed = match en.ca.sign_agent(&req.csr_pem, id, days) {
            Ok(s) => s,
            Err(e) => {
                let why = format!("bad CSR: {e}");
                activity::log(&mut w, failed_enrolment(&actor, &vm, &group, &why)).await?;
                w.commit().await?;
                tracing::warn!(%vm, address = caller_address, error = %e, "enrolment refused: bad CSR");
                return Err(Error::refused(ErrorCode::InvalidCsr, e));
            }
        };
        let revoked = agents::revoke_active(&mut w, &vm).await?;
        let id_s = id.to_string();
        agents::insert(
            &mut w,
            &NewAgent {
                id: &id_s,
                vm: &vm,
                fingerprint: &signed.fingerprint,
                serial: &signed.serial,
                cert_pem: &signed.pem,
                not_after_ms: signed.not_after_ms,
            },
        )
        .await?;
        agents::use_enroll_token(&mut w, &hash, &id_s).await?;
        activity::log(
            &mut w,
            NewActivity::vm(Operation::EnrollAgent, &group, &vm, &actor).details(
                serde_json::json!({"agentId": id_s,
                "certificateSerial": signed.serial, "previousAgentsRevoked": revoked,
                "certificateNotAfterMs": signed.not_after_ms}),
            ),
        )
        .await?;
        w.commit().await?;
        tracing::info!(%vm, agent = %id, address = caller_address, "agent enrolled");
        Ok(EnrollResponse {
            agent_id: id_s,
            vm,
            certificate_pem: signed.pem,
            ca_pem: en.ca.pem.clone(),
            // The key in use after a rotation; the one `init` made before any.
            grant_signing_key_pem: crate::store::grant_keys::current_pem(self.db.pool())
                .await?
                .unwrap_or_else(|| en.grant_signing_key_pem.clone()),
            agent_endpoint: en.agent_endpoint.clone(),
            agent_endpoints: en.agent_endpoints.clone(),
        })
    }

    /// Renews the certificate of agent `agent` of VM `vm` over its channel: `csr_pem` must
    /// carry `public_key` (the key of the certificate the connection was made with, which
    /// the TLS handshake proved), and the agent must still be active (a revoked agent never
    /// renews). Records the new certificate (the old one keeps identifying the agent until
    /// it expires) and an activity entry (`Renew Agent Certificate`, Succeeded or Failed).
    /// Returns the certificate (PEM) and the CA bundle the agent is to trust.
    pub async fn renew_certificate(
        &self,
        agent: uuid::Uuid,
        vm: &str,
        public_key: &[u8],
        csr_pem: &str,
        expired: bool,
    ) -> std::result::Result<(String, String), RenewalError> {
        let Some(en) = &self.enrollment else {
            return Err(RenewalError::Refused(
                "this controller does not issue agent certificates".into(),
            ));
        };
        let actor = Actor::agent(agent);
        let group = inventory::require_vm(self.db.pool(), vm)
            .await
            .map(|v| v.resource_group)
            .unwrap_or_default();
        let agent_s = agent.to_string();
        let window = en.certs.renewal_min_interval();
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let refusal = |kind: RefusalKind, why: String| Refusal {
            agent,
            vm,
            group: &group,
            kind,
            why,
            window_ms,
            details: serde_json::json!({"expired": expired}),
        };
        if let Some(last_ms) = agents::cert_renewed_ms(self.db.pool(), &agent_s).await? {
            let now = jitgate_api::time::now_ms();
            if now - last_ms < window_ms {
                return Err(self.renewal_refused(rate_refusal(refusal, last_ms)).await?);
            }
        }
        if csr_pem.len() > jitgate_proto::MAX_CERT_PEM {
            let why = "the certificate request is too large".to_string();
            return Err(self
                .renewal_refused(refusal(RefusalKind::TooLarge, why))
                .await?);
        }
        let signed = match en.ca.renew_agent(
            csr_pem,
            agent,
            public_key,
            lifetime(en.certs.agent_lifetime()),
        ) {
            Ok(s) => s,
            Err(e) => {
                let kind = match e {
                    ca::RenewRefused::BadRequest(_) => RefusalKind::BadRequest,
                    ca::RenewRefused::KeyMismatch => RefusalKind::KeyMismatch,
                    ca::RenewRefused::Signing(_) => RefusalKind::Signing,
                };
                return Err(self.renewal_refused(refusal(kind, e.to_string())).await?);
            }
        };
        let mut w = self.db.begin().await?;
        let renewed = agents::renew_cert(
            &mut w,
            &agent_s,
            &agents::RenewedCert {
                fingerprint: &signed.fingerprint,
                serial: &signed.serial,
                cert_pem: &signed.pem,
                not_after_ms: signed.not_after_ms,
            },
            window_ms,
        )
        .await?;
        match renewed {
            agents::Renewal::Renewed => {}
            agents::Renewal::NotActive => {
                drop(w);
                let why = format!("agent {agent} is revoked: re-enrol the host");
                return Err(self
                    .renewal_refused(refusal(RefusalKind::Revoked, why))
                    .await?);
            }
            agents::Renewal::TooSoon { last_ms } => {
                drop(w);
                return Err(self.renewal_refused(rate_refusal(refusal, last_ms)).await?);
            }
        }
        activity::log(
            &mut w,
            NewActivity::vm(Operation::RenewAgentCertificate, &group, vm, &actor)
                .outcome(ActivityOutcome::Succeeded)
                .details(serde_json::json!({"agentId": agent_s,
                    "certificateSerial": signed.serial,
                    "certificateNotAfterMs": signed.not_after_ms,
                    "expired": expired})),
        )
        .await?;
        w.commit().await?;
        tracing::info!(%agent, %vm, serial = %signed.serial, not_after_ms = signed.not_after_ms,
            expired, "agent certificate renewed");
        Ok((signed.pem, en.ca.pem.clone()))
    }

    /// A refused renewal: the reason for the agent, and the activity entry (`Renew Agent
    /// Certificate`, Failed, with the `kind`) written at most once per agent, kind and
    /// window (`[certificates] renewal_min_interval_seconds`), so that a stolen agent key
    /// cannot grow the activity log one entry per attempt. Every refusal is answered.
    async fn renewal_refused(&self, r: Refusal<'_>) -> Result<RenewalError> {
        let agent_s = r.agent.to_string();
        let (agent, vm, kind) = (r.agent, r.vm, r.kind.as_str());
        let mut w = self.db.begin().await?;
        if agents::note_cert_refusal(&mut w, &agent_s, kind, r.window_ms).await? {
            let mut details =
                serde_json::json!({"agentId": agent_s, "reason": r.why, "kind": kind});
            if let (Some(d), serde_json::Value::Object(more)) = (details.as_object_mut(), r.details)
            {
                d.extend(more);
            }
            activity::log(
                &mut w,
                NewActivity::vm(
                    Operation::RenewAgentCertificate,
                    r.group,
                    vm,
                    &Actor::agent(agent),
                )
                .outcome(ActivityOutcome::Failed)
                .details(details),
            )
            .await?;
            w.commit().await?;
            tracing::warn!(%agent, %vm, kind, reason = %r.why,
                "agent certificate renewal refused (further refusals of this kind in this window are not logged)");
        } else {
            drop(w);
            tracing::debug!(%agent, %vm, kind, "agent certificate renewal refused (already logged in this window)");
        }
        Ok(RenewalError::Refused(r.why))
    }

    /// Records that an agent's certificate was refused at the handshake because it expired
    /// longer ago than the renewal grace (`Renew Agent Certificate`, Failed, kind
    /// `pastGrace`): the host must be re-enrolled. Written like every refused renewal, at
    /// most once per agent and window; this controller also skips the database for an agent
    /// it told within the window.
    pub fn spawn_past_grace(
        &self,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<crate::channel::tls::PastGrace>,
    ) -> tokio::task::JoinHandle<()> {
        let fleet = self.clone();
        let window = self
            .enrollment
            .as_ref()
            .map(|e| e.certs.renewal_min_interval())
            .unwrap_or(std::time::Duration::from_secs(3600));
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        tokio::spawn(async move {
            let mut told: std::collections::HashMap<uuid::Uuid, std::time::Instant> =
                std::collections::HashMap::new();
            while let Some(p) = rx.recv().await {
                let now = std::time::Instant::now();
                told.retain(|_, at| now.duration_since(*at) < window);
                if told.contains_key(&p.agent) {
                    continue;
                }
                told.insert(p.agent, now);
                let agent_s = p.agent.to_string();
                let vm = agents::vm_of(fleet.db.pool(), &agent_s)
                    .await
                    .ok()
                    .flatten()
                    .unwrap_or_default();
                let group = inventory::require_vm(fleet.db.pool(), &vm)
                    .await
                    .map(|v| v.resource_group)
                    .unwrap_or_default();
                let r = fleet
                    .renewal_refused(Refusal {
                        agent: p.agent,
                        vm: &vm,
                        group: &group,
                        kind: RefusalKind::PastGrace,
                        why: "the certificate expired longer ago than the renewal grace: \
                              re-enrol the host"
                            .into(),
                        window_ms,
                        details: serde_json::json!({"expired": true,
                            "certificateNotAfterMs": p.not_after_unix.saturating_mul(1000)}),
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot record a refused renewal");
                }
            }
        })
    }

    /// The renewal grace: how long after expiry an agent's certificate still renews.
    pub fn renewal_grace(&self) -> Option<std::time::Duration> {
        self.enrollment.as_ref().map(|e| e.certs.agent_grace())
    }

    /// Revokes every active agent of a VM; returns their ids. Their credentials are refused
    /// from then on (a live connection is closed within seconds).
    pub async fn revoke_agents(&self, caller: &Caller, vm: &str) -> Result<Vec<String>> {
        authz::authorize(caller, Action::Administer)?;
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        let mut w = self.db.begin().await?;
        let ids = agents::active_ids(&mut w, vm).await?;
        if ids.is_empty() {
            return Err(Error::refused(
                ErrorCode::AgentNotFound,
                format!("VM {vm} has no active agent"),
            ));
        }
        agents::revoke_active(&mut w, vm).await?;
        activity::log(
            &mut w,
            NewActivity::vm(Operation::RevokeAgent, &group, vm, &caller.actor())
                .details(serde_json::json!({ "agentIds": ids })),
        )
        .await?;
        w.commit().await?;
        Ok(ids)
    }

    /// The fleet view, limited to the caller's scope.
    pub async fn agents(&self, caller: &Caller) -> Result<Vec<Agent>> {
        let now = jitgate_api::time::now_ms();
        let mut out = Vec::new();
        for row in agents::fleet(self.db.pool()).await? {
            let (r, audit_records) = (row.agent, row.audit_records);
            if !authz::sees_vm(caller, &r.vm, &r.resource_group) {
                continue;
            }
            let hb = r.heartbeat()?;
            let hooks = r.hooks()?;
            let (connection, problems) =
                self.presence
                    .shown(&r.id, &r.status, r.last_seen_ms, hb.as_ref(), now);
            out.push(Agent {
                virtual_machine: r.vm,
                resource_group: r.resource_group,
                agent_id: r.id,
                status: r.status,
                connection,
                problems,
                enrolled_time_utc: jitgate_api::time::format(r.enrolled_ms),
                last_seen_time_utc: r.last_seen_ms.map(jitgate_api::time::format),
                interfaces: hb
                    .as_ref()
                    .map(|h| h.interfaces.clone())
                    .unwrap_or_default(),
                protected_ports: hb
                    .as_ref()
                    .map(|h| h.protected_ports.clone())
                    .unwrap_or_default(),
                listening: hb.as_ref().map(|h| h.listening.clone()).unwrap_or_default(),
                clock_offset_ms: hb.as_ref().and_then(|h| h.clock_offset_ms),
                active_grants: hb.as_ref().map(|h| h.active_grants),
                audit_head: hb.as_ref().map(|h| h.audit_head.clone()),
                audit_seq: hb.as_ref().map(|h| h.audit_seq),
                audit_records,
                hooks,
            });
        }
        Ok(out)
    }

    /// A page of the fleet for the portal: the agents within the caller's scope after
    /// `after` (VM name, agent id) whose VM name contains `name_part` and, if given, whose
    /// connection is `connection`. Reads batches of the index by VM name until `limit`
    /// agents match or [`SCAN_MAX`] were looked at, so a rare status costs a bounded read;
    /// `next` is where the following page starts (None: the end).
    pub async fn page(
        &self,
        caller: &Caller,
        name_part: &str,
        connection: Option<AgentConnection>,
        after: (String, String),
        limit: usize,
    ) -> Result<FleetPage> {
        let scopes = caller.scopes();
        let status = connection.as_ref().map(|c| match c {
            AgentConnection::Revoked => AgentStatus::Revoked,
            _ => AgentStatus::Active,
        });
        let q = agents::FleetQuery {
            name_part,
            status,
            scopes: &scopes,
        };
        let now = jitgate_api::time::now_ms();
        let batch = i64::try_from(limit.max(1)).unwrap_or(i64::MAX - 1) + 1;
        let mut cursor = after;
        let mut out = Vec::new();
        let mut scanned = 0usize;
        loop {
            let rows =
                agents::fleet_page(self.db.pool(), &q, (&cursor.0, &cursor.1), batch).await?;
            let end = rows.len() < usize::try_from(batch).unwrap_or(usize::MAX);
            for r in rows {
                if out.len() == limit {
                    return Ok(FleetPage {
                        agents: out,
                        next: Some(cursor),
                        scanned,
                    });
                }
                cursor = (r.agent.vm.clone(), r.agent.id.clone());
                scanned += 1;
                let e = self.entry(r, now)?;
                if connection.as_ref().is_none_or(|c| *c == e.connection) {
                    out.push(e);
                }
            }
            if end {
                return Ok(FleetPage {
                    agents: out,
                    next: None,
                    scanned,
                });
            }
            if scanned >= SCAN_MAX {
                return Ok(FleetPage {
                    agents: out,
                    next: Some(cursor),
                    scanned,
                });
            }
        }
    }

    /// One agent for the portal, if the caller may see its VM.
    pub async fn entry_of(&self, caller: &Caller, id: &str) -> Result<FleetEntry> {
        let not_found = || Error::refused(ErrorCode::AgentNotFound, format!("no agent {id}"));
        let Some(r) = agents::fleet_agent(self.db.pool(), id).await? else {
            return Err(not_found());
        };
        if !authz::sees_vm(caller, &r.agent.vm, &r.agent.resource_group) {
            // Outside the caller's scope reads as absent (no hint that it exists).
            return Err(not_found());
        }
        self.entry(r, jitgate_api::time::now_ms())
    }

    /// The newest agent of a VM the caller may read (an active one first).
    pub async fn newest_of_vm(&self, caller: &Caller, vm: &str) -> Result<Option<String>> {
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        authz::authorize(caller, Action::ReadVm { vm, group: &group })?;
        agents::newest_of_vm(self.db.pool(), vm).await
    }

    fn entry(&self, r: agents::FleetPageRow, now: i64) -> Result<FleetEntry> {
        let a = &r.agent;
        let report = a.heartbeat()?;
        let hooks = a.hooks()?;
        let (connection, problems) =
            self.presence
                .shown(&a.id, &a.status, a.last_seen_ms, report.as_ref(), now);
        Ok(FleetEntry {
            hooks,
            id: r.agent.id,
            vm: r.agent.vm,
            resource_group: r.agent.resource_group,
            connection,
            problems,
            enrolled_ms: r.agent.enrolled_ms,
            last_seen_ms: r.agent.last_seen_ms,
            protocol: r.protocol,
            version: r.version,
            delivered_seq: r.delivered_seq,
            report,
        })
    }

    // What the agent channel records. The certificate (checked by the channel) authenticates
    // the agent; these act as that agent.

    /// The agent holding a certificate (by the SHA-256 of its DER).
    pub async fn identify(&self, fingerprint: &str) -> Result<Option<AgentIdentity>> {
        agents::by_fingerprint(self.db.pool(), fingerprint).await
    }

    pub async fn status(&self, agent: &str) -> Result<Option<AgentStatus>> {
        agents::status(self.db.pool(), agent).await
    }

    /// The agent spoke (with its status report, if any): kept and written within
    /// [`reports::FLUSH_EVERY`] ([`reports`]). Not in the activity log.
    pub fn seen(&self, agent: &str, report: Option<Heartbeat>) {
        self.reports.note(agent, report);
    }

    /// The agent's hook report changed (or is its first on this connection): kept and
    /// written within [`reports::FLUSH_EVERY`], like status reports.
    pub fn hooks(&self, agent: &str, hooks: &[InterfaceHook]) -> Result<()> {
        self.reports
            .note_hooks(agent, serde_json::to_string(hooks)?);
        Ok(())
    }

    /// Writes the kept reports every [`reports::FLUSH_EVERY`] until shutdown.
    pub fn spawn_reports(
        &self,
        shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        reports::spawn(self.db.clone(), self.reports.clone(), shutdown)
    }

    /// An agent said Hello at protocol level `protocol` (docs/protocol.md "Levels") as
    /// `version` (its own words, cut to [`agents::VERSION_MAX_CHARS`]).
    pub async fn hello(&self, agent: &str, protocol: u32, version: &str) -> Result<()> {
        let mut w = self.db.begin().await?;
        agents::hello(&mut w, agent, protocol, version).await?;
        w.commit().await
    }

    /// An activity log entry about an agent's VM (results, rejections).
    pub async fn log(
        &self,
        agent: &str,
        vm: &str,
        operation: Operation,
        outcome: ActivityOutcome,
        details: serde_json::Value,
    ) -> Result<()> {
        let group = group_of(&self.db, vm).await?;
        let mut w = self.db.begin().await?;
        activity::log(
            &mut w,
            NewActivity::vm(operation, &group, vm, &Actor::agent(agent))
                .outcome(outcome)
                .details(details),
        )
        .await?;
        w.commit().await
    }

    /// Records a reported local (break-glass) grant once, with its activity entry and its
    /// `access.break_glass` notification; true if it was new.
    pub async fn record_local_grant(
        &self,
        agent: &str,
        vm: &str,
        g: &ReportedGrant,
        max_connections: Option<MaxConnections>,
    ) -> Result<bool> {
        let group = group_of(&self.db, vm).await?;
        let gid = g.grant_id.to_string();
        let mut w = self.db.begin().await?;
        if !agents::insert_local_grant(&mut w, agent, &gid, max_connections).await? {
            return Ok(false);
        }
        let mut details = serde_json::json!({
            "grantId": gid,
            "origin": GrantOrigin::Local.as_str(),
            "protocol": g.protocol.to_string(),
            "number": g.port.get(),
            "allowedSourceAddressPrefix": g.source.to_string(),
            "endTimeUtc": jitgate_api::time::format(g.end_unix_ms),
            "requestor": g.requester,
        });
        if let Some(m) = max_connections {
            details["maxConnections"] = m.get().into();
        }
        activity::log(
            &mut w,
            NewActivity::vm(Operation::LocalAccess, &group, vm, &Actor::agent(agent))
                .details(details),
        )
        .await?;
        let event = crate::outbox::event::break_glass(vm, &group, g, max_connections, w.now);
        crate::store::notify::insert_events(&mut w, &[event]).await?;
        w.commit().await?;
        Ok(true)
    }

    /// Stores audit records (each once per (agent, id)); returns the highest seq up to which
    /// every seq after `acked` is stored.
    pub async fn store_audit(
        &self,
        agent: &str,
        acked: u64,
        records: &[AuditRecord],
    ) -> Result<u64> {
        let mut w = self.db.begin().await?;
        agent_audit::insert(&mut w, agent, records).await?;
        w.commit().await?;
        agent_audit::contiguous_from(self.db.pool(), agent, acked).await
    }
}

/// The most agents one Fleet page looks at when a status filter skips most of them.
pub const SCAN_MAX: usize = 2_000;

/// A page of the fleet ([`Fleet::page`]).
pub struct FleetPage {
    pub agents: Vec<FleetEntry>,
    /// (VM name, agent id) after which the next page starts; None: nothing follows.
    pub next: Option<(String, String)>,
    /// How many agents were looked at.
    pub scanned: usize,
}

/// One agent on the portal's Fleet pages.
pub struct FleetEntry {
    pub id: String,
    pub vm: String,
    pub resource_group: String,
    pub connection: AgentConnection,
    pub problems: Vec<String>,
    pub enrolled_ms: i64,
    pub last_seen_ms: Option<i64>,
    pub protocol: i64,
    /// As the agent named it in its last Hello (None: not since the controller kept it).
    pub version: Option<String>,
    /// The highest seq of the records stored from it.
    pub delivered_seq: Option<i64>,
    /// Its last status report.
    pub report: Option<Heartbeat>,
    /// Its last hook report (empty: none).
    pub hooks: Vec<InterfaceHook>,
}

/// A hook report as the agent sent it, bounded ([`jitgate_proto::message::bounded_hooks`])
/// and in the API's terms: parsed once, here, at the channel.
pub fn hooks_from_agent(reported: Vec<jitgate_proto::InterfaceHook>) -> Vec<InterfaceHook> {
    use jitgate_api::{HookKind as K, HookMode as M, HookProblem as P};
    let kind = |k: jitgate_proto::HookKind| match k {
        jitgate_proto::HookKind::Xdp => K::Xdp,
        jitgate_proto::HookKind::XdpDispatcher => K::XdpDispatcher,
        jitgate_proto::HookKind::TcxIngress => K::TcxIngress,
    };
    jitgate_proto::message::bounded_hooks(reported)
        .into_iter()
        .map(|h| {
            let (problem, problem_reason) = match h.problem {
                None => (None, None),
                Some(jitgate_proto::HookProblem::NotFirst) => (Some(P::NotFirst), None),
                Some(jitgate_proto::HookProblem::Missing { reason }) => {
                    (Some(P::Missing), Some(reason))
                }
            };
            InterfaceHook {
                interface: h.interface,
                hook: kind(h.hook),
                mode: match h.mode {
                    jitgate_proto::HookMode::Driver => M::Driver,
                    jitgate_proto::HookMode::Generic => M::Generic,
                    jitgate_proto::HookMode::Tcx => M::Tcx,
                },
                position: h.position,
                programs: h.programs,
                ahead: h
                    .ahead
                    .into_iter()
                    .map(|a| jitgate_api::ProgramAhead {
                        id: a.id,
                        name: a.name,
                        hook: kind(a.hook),
                    })
                    .collect(),
                problem,
                problem_reason,
            }
        })
        .collect()
}

/// The VM's group ('' if the VM is gone).
async fn group_of(db: &Db, vm: &str) -> Result<String> {
    Ok(inventory::vm(db.pool(), vm)
        .await?
        .map(|v| v.resource_group)
        .unwrap_or_default())
}

fn failed_enrolment(actor: &Actor, vm: &str, group: &str, why: &str) -> NewActivity {
    NewActivity::vm(Operation::EnrollAgent, group, vm, actor)
        .outcome(ActivityOutcome::Failed)
        .details(serde_json::json!({ "reason": why }))
}
