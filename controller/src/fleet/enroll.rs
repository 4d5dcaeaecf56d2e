//! Enrolment: one-time tokens, and an agent's first certificate signed against one.

use jitgate_api::{ActivityOutcome, EnrollRequest, EnrollResponse, ErrorCode, Operation};

use super::{Fleet, ca};
use crate::authz::{self, Action, Actor, Caller};
use crate::error::{Error, Result};
use crate::ids;
use crate::store::activity::{self, NewActivity};
use crate::store::agents::{self, NewAgent};
use crate::store::{enroll_tokens, inventory};

/// Lifetime of an enrolment token.
pub const ENROLL_TTL_MS: i64 = 24 * 3600 * 1000;

/// What enrolment hands out besides the certificate.
pub struct Enrollment {
    pub ca: ca::Ca,
    /// SPKI PEM of the grant-signing public key.
    pub grant_signing_key_pem: String,
    /// host:port of this controller's agent channel.
    pub agent_endpoint: String,
    /// Every controller's (`agent_endpoints`, else this one's only).
    pub agent_endpoints: Vec<String>,
    /// Agent certificate lifetime (level 6 and later) and renewal grace.
    pub certs: ca::CertConfig,
}

impl Fleet {
    /// Issues a one-time enrolment token for a VM; returns it (shown once) and its expiry.
    pub async fn create_enroll_token(&self, caller: &Caller, vm: &str) -> Result<(String, i64)> {
        authz::authorize(caller, Action::Administer)?;
        let group = inventory::require_vm(self.db.pool(), vm)
            .await?
            .resource_group;
        let token = ids::new_enroll_token();
        let mut w = self.db.begin().await?;
        let expires = w.now + ENROLL_TTL_MS;
        enroll_tokens::insert(&mut w, &ids::hash_token(&token), vm, expires).await?;
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
        let row = enroll_tokens::find(&mut w, &hash).await?;
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
        enroll_tokens::mark_used(&mut w, &hash, &id_s).await?;
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
}

/// Days in `d` (at least the seconds, for the short lifetimes of tests).
pub(super) fn lifetime(d: std::time::Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

fn failed_enrolment(actor: &Actor, vm: &str, group: &str, why: &str) -> NewActivity {
    NewActivity::vm(Operation::EnrollAgent, group, vm, actor)
        .outcome(ActivityOutcome::Failed)
        .details(serde_json::json!({ "reason": why }))
}
