//! One-time portal sign-in links (`jit-controller login-link`, docs/portal.md): for first
//! setup and demos without an identity provider. A link is made by root on the controller
//! host, holds a 256-bit secret of which only the hash is stored, is valid for at most
//! [`LINK_VALID`], and is redeemed exactly once by a POST (a GET only shows what it is, so
//! a link preview or scanner cannot use it up). Redeeming starts a portal session of the
//! principal `link:NAME`, which never approves. Links are off once `[oidc]` is configured
//! unless `login_links = true` says otherwise; switching them off also ends their sessions'
//! use. Making and redeeming are both in the activity log.

use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use jitgate_api::{
    ErrorCode, GrantView, Operation, PrincipalId, ResourceType, Role, Scope, SessionGranted,
};
use jitgate_oidc::Groups;

use crate::authz::{self, Action, Caller, Principal};
use crate::error::{Error, Result};
use crate::ids;
use crate::signin::{Created, Sessions, ms};
use crate::store::activity::{self, NewActivity};
use crate::store::login_links::{self, LinkRow};
use crate::store::sessions::{self, SessionRow};

/// How long a link can be redeemed.
pub const LINK_VALID: Duration = Duration::from_secs(10 * 60);
/// How long a session begun with a link lasts (no provider re-checks it).
pub const LINK_SESSION: Duration = Duration::from_secs(8 * 60 * 60);

/// A new link: its id (in the activity log) and its secret (shown once, in the URL).
pub struct NewLink {
    pub id: String,
    pub secret: String,
    pub expires_ms: i64,
}

/// What a valid, unused link signs in as.
pub struct LinkInfo {
    pub name: String,
    pub role: Role,
    pub scope: Scope,
    pub expires_ms: i64,
}

/// Whether a session began with a link.
pub(crate) fn is_link_session(s: &SessionRow) -> bool {
    matches!(
        PrincipalId::from_str(&s.principal),
        Ok(PrincipalId::Link(_))
    )
}

/// The caller of a link session.
pub(crate) fn caller_of(s: &SessionRow, name: String, address: IpAddr) -> Caller {
    Caller::person(
        Principal::Link {
            name,
            session: s.id.clone(),
        },
        super::grants_of(s),
        address,
    )
}

fn refused(message: &str) -> Error {
    Error::refused(ErrorCode::SignInRefused, message)
}

impl Sessions {
    fn links_on(&self) -> Result<()> {
        if self.links {
            Ok(())
        } else {
            Err(Error::refused(
                ErrorCode::SignInNotConfigured,
                "one-time sign-in links are off on this controller (they are off by default \
                 once [oidc] is configured; login_links = true in controller.toml turns them on)",
            ))
        }
    }

    /// Makes a link for `link:NAME` with one role and scope (root on the host only).
    pub async fn create_link(
        &self,
        caller: &Caller,
        name: &str,
        role: Role,
        scope: &Scope,
    ) -> Result<NewLink> {
        authz::authorize(caller, Action::Administer)?;
        self.links_on()?;
        let principal = PrincipalId::from_str(&format!("link:{name}"))
            .map_err(|e| Error::refused(ErrorCode::InvalidName, e.to_string()))?;
        let secret = ids::new_link_secret();
        let mut w = self.db.begin().await?;
        let row = LinkRow {
            id: ids::new_link_id(),
            name: name.to_string(),
            role: role.as_str().to_string(),
            scope: scope.to_string(),
            created_ms: w.now,
            expires_ms: w.now.saturating_add(ms(LINK_VALID)),
            redeemed_ms: None,
        };
        login_links::insert(&mut w, &row, &ids::hash_token(&secret)).await?;
        activity::log(
            &mut w,
            NewActivity::other(
                Operation::CreateLoginLink,
                ResourceType::Session,
                "",
                &caller.actor(),
            )
            .details(serde_json::json!({
                "linkId": row.id, "principal": principal.to_string(), "role": row.role,
                "scope": row.scope,
                "expiresTimeUtc": jitgate_api::time::format(row.expires_ms)})),
        )
        .await?;
        w.commit().await?;
        tracing::info!(link = %row.id, %principal, "one-time sign-in link made");
        Ok(NewLink {
            id: row.id,
            secret,
            expires_ms: row.expires_ms,
        })
    }

    /// The link's row while it can still be redeemed.
    async fn usable(&self, secret: &str) -> Result<LinkRow> {
        self.links_on()?;
        let gone = "this sign-in link is unknown, already used or expired: ask for a new one";
        if !ids::plausible_link(secret) {
            return Err(refused(gone));
        }
        let row = login_links::by_hash(self.db.pool(), &ids::hash_token(secret))
            .await?
            .ok_or_else(|| refused(gone))?;
        if row.redeemed_ms.is_some() || jitgate_api::time::now_ms() >= row.expires_ms {
            return Err(refused(gone));
        }
        Ok(row)
    }

    /// What a link would sign in as (for the page that asks to confirm); changes nothing.
    pub async fn peek_link(&self, secret: &str) -> Result<LinkInfo> {
        let row = self.usable(secret).await?;
        Ok(LinkInfo {
            role: row
                .role
                .parse()
                .map_err(|_| Error::corrupt(format!("link {}: role", row.id)))?,
            scope: row
                .scope
                .parse()
                .map_err(|_| Error::corrupt(format!("link {}: scope", row.id)))?,
            name: row.name,
            expires_ms: row.expires_ms,
        })
    }

    /// Redeems a link: exactly once, before it expires; a new portal session.
    pub async fn redeem_link(&self, secret: &str, address: IpAddr) -> Result<Created> {
        let link = self.usable(secret).await?;
        let info = self.peek_link(secret).await?;
        let credential = ids::new_session_credential();
        let mut w = self.db.begin().await?;
        let now = w.now;
        if !login_links::redeem(&mut w, &link.id, now).await? {
            return Err(refused(
                "this sign-in link was used a moment ago or has just expired: ask for a new one",
            ));
        }
        let expires_ms = now.saturating_add(ms(LINK_SESSION));
        let row = SessionRow {
            id: ids::new_session_id(),
            principal: PrincipalId::Link(info.name.clone()).to_string(),
            display_name: info.name,
            email: None,
            groups: Groups::Known {
                groups: Default::default(),
            },
            roles: vec![GrantView {
                role: info.role,
                scope: info.scope,
                via_groups: Vec::new(),
            }],
            client: jitgate_oidc::ClientKind::Portal.as_str().to_string(),
            refresh_sealed: None,
            created_ms: now,
            expires_ms,
            // Nothing to refresh: the session simply ends at its lifetime.
            refresh_due_ms: expires_ms,
            source_address: address.to_string(),
            ended_ms: None,
            end_reason: None,
        };
        sessions::insert(&mut w, &row, &ids::hash_token(&credential)).await?;
        let caller = crate::signin::caller_of(&row, address)?;
        activity::log(
            &mut w,
            NewActivity::other(
                Operation::RedeemLoginLink,
                ResourceType::Session,
                "",
                &caller.actor(),
            )
            .details(serde_json::json!({
                "linkId": link.id, "sessionId": row.id, "principal": row.principal,
                "roles": row.roles,
                "expiresTimeUtc": jitgate_api::time::format(row.expires_ms)})),
        )
        .await?;
        w.commit().await?;
        tracing::info!(link = %link.id, session = %row.id, principal = %row.principal,
            "signed in with a one-time link");
        Ok(Created {
            granted: SessionGranted {
                credential,
                whoami: self.whoami_of(&row, &caller),
            },
            expires_ms,
            return_to: None,
        })
    }
}
