//! The refresh sweep: each open session is refreshed with the provider when its
//! `refresh_due` comes (at most [`REFRESH_EVERY`] apart), which re-reads the person's groups
//! and so their roles; any failure ends the session (`refresh_failed`, logged with the
//! error). A session is claimed before its refresh, so that of several controllers on one
//! database only one refreshes it (a rotated refresh token is good once).

use std::str::FromStr;

use jitgate_api::{PrincipalId, SessionEndReason};
use jitgate_oidc::{Principal, RefreshGrant};

use crate::authz::Actor;
use crate::error::Result;
use crate::signin::{REFRESH_EVERY, Sessions, grant_views, ms};
use crate::store::sessions::{self, SessionRow};

/// How long a claim keeps other controllers off a session being refreshed.
const CLAIM_MS: i64 = 2 * 60 * 1000;
/// Sessions refreshed per round.
const BATCH: i64 = 100;

/// What one round did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub refreshed: usize,
    pub ended: usize,
}

impl Sessions {
    /// Refreshes every open session whose refresh is due at `at_ms` (the sweep passes now).
    pub async fn refresh_due(&self, at_ms: i64) -> Result<Swept> {
        let mut swept = Swept::default();
        let Some(o) = self.oidc.clone() else {
            return Ok(swept);
        };
        let due = sessions::due(self.db.pool(), at_ms, BATCH).await?;
        for row in due {
            if !self.claim(&row, at_ms).await? {
                continue;
            }
            match self.refresh_one(&o, &row, at_ms).await {
                Ok(()) => swept.refreshed += 1,
                Err(reason) => {
                    tracing::warn!(session = %row.id, principal = %row.principal,
                        error = %reason, "session refresh failed: ending the session");
                    match self
                        .end(
                            &row.id,
                            SessionEndReason::RefreshFailed,
                            &Actor::controller(),
                            Some(reason),
                        )
                        .await
                    {
                        Ok(_) => swept.ended += 1,
                        Err(e) if e.code().is_some() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        Ok(swept)
    }

    /// Pushes the due time out by a claim; false if another controller got there first.
    /// Times count from the sweep's own time (`at_ms`, never before now), so that no sweep
    /// at that time finds the claimed or refreshed session due again.
    async fn claim(&self, row: &SessionRow, at_ms: i64) -> Result<bool> {
        let mut w = self.db.begin().await?;
        let until = w.now.max(at_ms) + CLAIM_MS;
        let claimed = sessions::claim_refresh(&mut w, &row.id, row.refresh_due_ms, until).await?;
        w.commit().await?;
        Ok(claimed)
    }

    /// One refresh; the error (as text, for the activity log) ends the session.
    async fn refresh_one(
        &self,
        o: &crate::signin::Oidc,
        row: &SessionRow,
        at_ms: i64,
    ) -> std::result::Result<(), String> {
        let now = jitgate_api::time::now_ms().max(at_ms);
        if now >= row.expires_ms {
            return Err("the session reached its lifetime".into());
        }
        let sealed = row.refresh_sealed.as_deref().ok_or(
            "the identity provider issued no refresh token at sign-in (add offline_access to \
             [oidc] scopes)",
        )?;
        let grant = RefreshGrant::open(&o.sealer, &row.id, sealed).map_err(|e| e.to_string())?;
        let principal = match PrincipalId::from_str(&row.principal) {
            Ok(PrincipalId::Oidc { issuer, subject }) => Principal::new(&issuer, &subject),
            _ => return Err(format!("stored principal {:?} is not oidc:", row.principal)),
        };
        let signed =
            o.rp.refresh(&grant, &principal)
                .await
                .map_err(|e| e.to_string())?;
        let identity = signed.identity;
        let mut next = row.clone();
        next.roles = jitgate_oidc::map_roles(&identity.groups, &o.config.roles)
            .map(grant_views)
            .unwrap_or_default();
        next.groups = identity.groups;
        next.display_name = identity.display_name;
        next.email = identity.email.map(|e| e.address);
        let sealed = signed.refresh.as_ref().map(|g| g.seal(&o.sealer, &row.id));
        let next_due = now.saturating_add(ms(REFRESH_EVERY)).min(row.expires_ms);
        let store = async {
            let mut w = self.db.begin().await?;
            sessions::refreshed(&mut w, &next, sealed.as_deref(), next_due).await?;
            w.commit().await
        };
        store
            .await
            .map_err(|e: crate::error::Error| e.to_string())?;
        tracing::info!(session = %row.id, principal = %row.principal,
            roles = next.roles.len(), "session refreshed");
        Ok(())
    }
}
