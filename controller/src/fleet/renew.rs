//! Certificate renewal over the agent channel, and its refusals (each logged at most once per
//! agent, kind and window).

use jitgate_api::{ActivityOutcome, Operation};

use super::enroll::lifetime;
use super::{Fleet, ca};
use crate::authz::Actor;
use crate::error::{Error, Result};
use crate::store::activity::{self, NewActivity};
use crate::store::{agent_certs, agents, inventory};

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

impl Fleet {
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
        if let Some(last_ms) = agent_certs::renewed_ms(self.db.pool(), &agent_s).await? {
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
        let renewed = agent_certs::renew(
            &mut w,
            &agent_s,
            &agent_certs::RenewedCert {
                fingerprint: &signed.fingerprint,
                serial: &signed.serial,
                cert_pem: &signed.pem,
                not_after_ms: signed.not_after_ms,
            },
            window_ms,
        )
        .await?;
        match renewed {
            agent_certs::Renewal::Renewed => {}
            agent_certs::Renewal::NotActive => {
                drop(w);
                let why = format!("agent {agent} is revoked: re-enrol the host");
                return Err(self
                    .renewal_refused(refusal(RefusalKind::Revoked, why))
                    .await?);
            }
            agent_certs::Renewal::TooSoon { last_ms } => {
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
        if agent_certs::note_refusal(&mut w, &agent_s, kind, r.window_ms).await? {
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
}
