//! Sign-in for people with OpenID Connect, and their sessions (docs/identity.md).
//!
//! The controller brokers every flow ([`jitgate_oidc::RelyingParty`] does the protocol): the
//! CLI brings the authorization code from its loopback listener, or polls the device flow;
//! the portal's browser comes back to `/auth/callback`. A finished sign-in becomes a
//! session: a random credential (`jitsess_...`, shown once, stored hashed like API tokens),
//! the person's groups and the (role, scope) rows they map to, and the provider's refresh
//! token sealed. [`refresh`] re-reads the groups at least every 15 minutes and ends the
//! session when that fails; a session whose refresh is overdue stops authenticating (a
//! stalled refresher fails closed).

pub mod link;
pub mod refresh;
pub mod replay;

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use jitgate_api::{
    CallbackBody, CallerKind, DevicePollBody, DeviceStarted, ErrorCode, GrantView, GroupsView,
    LoginBody, LoginStarted, Operation, PrincipalId, ResourceType, Role, Scope, SessionEndReason,
    SessionGranted, SessionView, Whoami,
};
use jitgate_oidc::{
    CallbackParams, ClientKind, DevicePoll, Groups, LoginRequest, LoopbackRedirect, OidcConfig,
    PendingDevice, PendingLogin, ProviderStatus, RefreshGrant, RelyingParty, ReturnPath, Sealer,
    SignIn,
};

use crate::authz::{self, Action, Actor, Caller, Grant, Principal};
use crate::error::{Error, Result};
use crate::ids;
use crate::store::activity::{self, NewActivity};
use crate::store::db::Db;
use crate::store::sessions::{self, SessionRow};

/// A session is refreshed with the provider at least this often.
pub const REFRESH_EVERY: Duration = Duration::from_secs(15 * 60);
/// A session whose refresh is this much overdue no longer authenticates.
pub const REFRESH_GRACE: Duration = Duration::from_secs(5 * 60);
/// How long one device poll waits at the provider before answering "pending".
pub const DEVICE_POLL_WAIT: Duration = Duration::from_secs(20);

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The relying party, the sealing key and `[oidc]`: present when sign-in is configured.
pub struct Oidc {
    pub rp: RelyingParty,
    pub sealer: Sealer,
    pub config: OidcConfig<Role, Scope>,
}

/// A started portal sign-in: where to send the browser, and the sealed state for the
/// pre-sign-in cookie.
pub struct PortalLogin {
    pub authorize_url: String,
    pub cookie: String,
    /// Unix seconds: the cookie's end.
    pub expires_at: i64,
}

/// Sessions of people: sign-in flows, authentication, whoami, sign-out, list and revoke.
#[derive(Clone)]
pub struct Sessions {
    db: Db,
    oidc: Option<Arc<Oidc>>,
    /// One-time sign-in links may be made and redeemed ([`link`]).
    links: bool,
}

/// A refusal for a sign-in that did not produce an identity; the reason is logged.
fn refused(e: jitgate_oidc::Error) -> Error {
    use jitgate_oidc::Error as E;
    let code = match &e {
        E::ProviderUnavailable { .. } => ErrorCode::SignInUnavailable,
        E::PortalNotConfigured | E::CliNotConfigured | E::DeviceFlowUnsupported { .. } => {
            ErrorCode::SignInNotConfigured
        }
        E::InvalidRedirect { .. } | E::InvalidReturnPath { .. } => ErrorCode::InvalidRequest,
        E::ReplayStore(_) => return Error::Internal(e.to_string()),
        _ => ErrorCode::SignInRefused,
    };
    tracing::warn!(error = %e, code = %code, "sign-in refused");
    Error::refused(code, e.to_string())
}

fn not_configured() -> Error {
    Error::refused(
        ErrorCode::SignInNotConfigured,
        "sign-in with an identity provider is not configured on this controller ([oidc] in \
         controller.toml); use an API token",
    )
}

fn grant_views(grants: Vec<jitgate_oidc::RoleGrant<Role, Scope>>) -> Vec<GrantView> {
    grants
        .into_iter()
        .map(|g| GrantView {
            role: g.role,
            scope: g.scope,
            via_groups: g.via_groups,
        })
        .collect()
}

fn groups_view(g: &Groups) -> GroupsView {
    match g {
        Groups::Known { groups } => GroupsView {
            known: true,
            groups: groups.iter().cloned().collect(),
            unknown_reason: None,
        },
        Groups::Unknown { reason } => GroupsView {
            known: false,
            groups: Vec::new(),
            unknown_reason: Some(reason.to_string()),
        },
    }
}

impl Sessions {
    pub fn new(db: Db, oidc: Option<Arc<Oidc>>, links: bool) -> Sessions {
        Sessions { db, oidc, links }
    }

    fn oidc(&self) -> Result<&Oidc> {
        self.oidc.as_deref().ok_or_else(not_configured)
    }

    /// Whether sign-in works now (None: not configured).
    pub fn status(&self) -> Option<ProviderStatus> {
        self.oidc.as_ref().map(|o| o.rp.status())
    }

    /// The caller a presented session credential stands for; None if unknown, ended, past
    /// its cap, overdue for refresh, or sign-in is no longer configured.
    pub async fn authenticate(&self, credential: &str, address: IpAddr) -> Result<Option<Caller>> {
        if !ids::plausible_session(credential) || (self.oidc.is_none() && !self.links) {
            return Ok(None);
        }
        let Some(s) = sessions::by_hash(self.db.pool(), &ids::hash_token(credential)).await? else {
            return Ok(None);
        };
        // A session lives only while the way it began is still switched on.
        let from_link = link::is_link_session(&s);
        if (from_link && !self.links) || (!from_link && self.oidc.is_none()) {
            return Ok(None);
        }
        let now = jitgate_api::time::now_ms();
        if s.ended_ms.is_some()
            || now >= s.expires_ms
            || now >= s.refresh_due_ms.saturating_add(ms(REFRESH_GRACE))
        {
            tracing::info!(session = %s.id, ended = s.ended_ms.is_some(),
                overdue = now >= s.refresh_due_ms, "session no longer valid");
            return Ok(None);
        }
        Ok(Some(caller_of(&s, address)?))
    }

    // --- the CLI's code flow (loopback redirect) -------------------------------------------

    pub async fn start_login(&self, body: &LoginBody) -> Result<LoginStarted> {
        let o = self.oidc()?;
        let redirect = LoopbackRedirect::parse(&body.redirect_uri).map_err(refused)?;
        let start =
            o.rp.start_login(LoginRequest::Cli { redirect })
                .await
                .map_err(refused)?;
        Ok(LoginStarted {
            state: start.pending.state().to_string(),
            handle: start.pending.seal(&o.sealer),
            authorize_url: start.authorize_url,
        })
    }

    /// Finishes a code flow of `client` (the CLI's through the API, the portal's through its
    /// cookie): the sealed state must fit the callback, the callback is used once, and the
    /// provider's ID token must validate.
    pub async fn finish_login(
        &self,
        body: &CallbackBody,
        address: IpAddr,
        client: ClientKind,
    ) -> Result<Created> {
        let o = self.oidc()?;
        let pending = PendingLogin::open(&o.sealer, &body.handle).map_err(refused)?;
        if pending.request().client() != client {
            return Err(refused(jitgate_oidc::StateError::OtherProvider.into()));
        }
        let params = CallbackParams {
            code: body.code.clone(),
            state: body.state.clone(),
            error: body.error.clone(),
            error_description: body.error_description.clone(),
            iss: body.iss.clone(),
        };
        let checked = pending.check_callback(&params).map_err(refused)?;
        let guard = replay::DbReplayGuard::new(self.db.clone());
        let return_to = checked
            .pending()
            .return_to()
            .map(|r| r.as_str().to_string());
        let signed = o.rp.finish_login(checked, &guard).await.map_err(refused)?;
        let mut created = self.create(o, signed, address).await?;
        created.return_to = return_to;
        Ok(created)
    }

    // --- the portal's code flow ------------------------------------------------------------

    pub async fn start_portal_login(&self, return_to: &str) -> Result<PortalLogin> {
        let o = self.oidc()?;
        let return_to = ReturnPath::parse(return_to).map_err(refused)?;
        let start =
            o.rp.start_login(LoginRequest::Portal { return_to })
                .await
                .map_err(refused)?;
        Ok(PortalLogin {
            cookie: start.pending.seal(&o.sealer),
            expires_at: start.pending.expires_at(),
            authorize_url: start.authorize_url,
        })
    }

    // --- the device flow -------------------------------------------------------------------

    pub async fn start_device(&self) -> Result<DeviceStarted> {
        let o = self.oidc()?;
        let d = o.rp.start_device().await.map_err(refused)?;
        Ok(DeviceStarted {
            user_code: d.user_code,
            verification_uri: d.verification_uri,
            verification_uri_complete: d.verification_uri_complete,
            expires_in: d.expires_in.as_secs(),
            interval: d.interval.as_secs(),
            handle: d.pending.seal(&o.sealer),
        })
    }

    /// One long poll: None while the person has not approved yet.
    pub async fn poll_device(
        &self,
        body: &DevicePollBody,
        address: IpAddr,
    ) -> Result<Option<Created>> {
        let o = self.oidc()?;
        let pending = PendingDevice::open(&o.sealer, &body.handle).map_err(refused)?;
        match o
            .rp
            .poll_device(&pending, DEVICE_POLL_WAIT)
            .await
            .map_err(refused)?
        {
            DevicePoll::Pending => Ok(None),
            DevicePoll::Complete(signed) => self.create(o, signed, address).await.map(Some),
        }
    }

    /// A new session for a finished sign-in, and its entry in the activity log.
    async fn create(&self, o: &Oidc, signed: SignIn, address: IpAddr) -> Result<Created> {
        let identity = signed.identity;
        let grants = jitgate_oidc::map_roles(&identity.groups, &o.config.roles)
            .map(grant_views)
            .unwrap_or_default();
        let id = ids::new_session_id();
        let credential = ids::new_session_credential();
        let mut w = self.db.begin().await?;
        let now = w.now;
        let expires_ms = now.saturating_add(ms(o.config.session_lifetime));
        let row = SessionRow {
            refresh_sealed: signed.refresh.as_ref().map(|g| g.seal(&o.sealer, &id)),
            id,
            principal: identity.principal.as_str().to_string(),
            display_name: identity.display_name,
            email: identity.email.map(|e| e.address),
            groups: identity.groups,
            roles: grants,
            client: signed.client.as_str().to_string(),
            created_ms: now,
            expires_ms,
            refresh_due_ms: now.saturating_add(ms(REFRESH_EVERY)).min(expires_ms),
            source_address: address.to_string(),
            ended_ms: None,
            end_reason: None,
        };
        sessions::insert(&mut w, &row, &ids::hash_token(&credential)).await?;
        let caller = caller_of(&row, address)?;
        activity::log(
            &mut w,
            NewActivity::other(
                Operation::SignIn,
                ResourceType::Session,
                "",
                &caller.actor(),
            )
            .details(serde_json::json!({
                    "sessionId": row.id, "principal": row.principal,
                    "displayName": row.display_name, "client": row.client,
                    "groups": groups_view(&row.groups), "roles": row.roles,
                    "expiresTimeUtc": jitgate_api::time::format(row.expires_ms)})),
        )
        .await?;
        w.commit().await?;
        tracing::info!(session = %row.id, principal = %row.principal, client = %row.client,
            roles = row.roles.len(), "signed in");
        Ok(Created {
            granted: SessionGranted {
                credential,
                whoami: self.whoami_of(&row, &caller),
            },
            expires_ms: row.expires_ms,
            return_to: None,
        })
    }

    // --- who, sign-out, administration -----------------------------------------------------

    /// The caller as `jit whoami` shows it.
    pub async fn whoami(&self, caller: &Caller) -> Result<Whoami> {
        if let Some(id) = caller.session_id() {
            let Some(row) = sessions::by_id(self.db.pool(), id).await? else {
                return Err(Error::refused(
                    ErrorCode::SessionNotFound,
                    format!("no session {id}"),
                ));
            };
            return Ok(self.whoami_of(&row, caller));
        }
        let kind = match caller.principal {
            Principal::Local => CallerKind::Local,
            _ => CallerKind::Token,
        };
        Ok(Whoami {
            kind,
            principal: caller.principal_id().to_string(),
            display_name: caller.name().to_string(),
            email: None,
            groups: GroupsView {
                known: true,
                groups: caller.groups.clone(),
                unknown_reason: None,
            },
            grants: caller
                .grants
                .iter()
                .map(|g| GrantView {
                    role: g.role,
                    scope: g.scope.clone(),
                    via_groups: Vec::new(),
                })
                .collect(),
            no_role: None,
            session_id: None,
            session_ends_utc: None,
            caller_address: caller.address.to_string(),
        })
    }

    fn whoami_of(&self, row: &SessionRow, caller: &Caller) -> Whoami {
        let no_role = match &self.oidc {
            Some(o) => jitgate_oidc::map_roles(&row.groups, &o.config.roles)
                .err()
                .map(|r| r.to_string()),
            None => None,
        };
        Whoami {
            kind: CallerKind::Session,
            principal: row.principal.clone(),
            display_name: row.display_name.clone(),
            email: row.email.clone(),
            groups: groups_view(&row.groups),
            grants: row.roles.clone(),
            no_role,
            session_id: Some(row.id.clone()),
            session_ends_utc: Some(jitgate_api::time::format(row.expires_ms)),
            caller_address: caller.address.to_string(),
        }
    }

    /// Ends the caller's own session (and revokes the provider's refresh token).
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        let Some(id) = caller.session_id() else {
            return Err(Error::refused(
                ErrorCode::InvalidRequest,
                "this caller is not a signed-in session: API tokens are revoked with \
                 `jit-controller token revoke`",
            ));
        };
        self.end(id, SessionEndReason::SignedOut, &caller.actor(), None)
            .await
            .map(drop)
    }

    /// Sessions (open ones, or all with `all`), newest first.
    pub async fn list(&self, caller: &Caller, all: bool) -> Result<Vec<SessionView>> {
        authz::authorize(caller, Action::ManageSessions)?;
        let now = jitgate_api::time::now_ms();
        let rows = sessions::list(self.db.pool(), (!all).then_some(now)).await?;
        Ok(rows.into_iter().map(view).collect())
    }

    /// Ends someone's session now.
    pub async fn revoke(&self, caller: &Caller, id: &str) -> Result<()> {
        authz::authorize(caller, Action::ManageSessions)?;
        self.end(id, SessionEndReason::Revoked, &caller.actor(), None)
            .await
            .map(drop)
    }

    /// Ends a session, names the person in the activity log, and (after the commit)
    /// revokes the provider's refresh token, best effort.
    async fn end(
        &self,
        id: &str,
        reason: SessionEndReason,
        actor: &Actor,
        error: Option<String>,
    ) -> Result<SessionRow> {
        let mut w = self.db.begin().await?;
        let Some(row) = sessions::by_id(w.conn(), id).await? else {
            return Err(Error::refused(
                ErrorCode::SessionNotFound,
                format!("no session {id}"),
            ));
        };
        if !sessions::end(&mut w, id, &reason).await? {
            return Err(Error::refused(
                ErrorCode::SessionEnded,
                format!("session {id} has already ended"),
            ));
        }
        let operation = match reason {
            SessionEndReason::SignedOut => Operation::SignOut,
            SessionEndReason::RefreshFailed => Operation::SessionRefreshFailed,
            _ => Operation::RevokeSession,
        };
        activity::log(
            &mut w,
            NewActivity::other(operation, ResourceType::Session, "", actor).details(
                serde_json::json!({"sessionId": row.id, "principal": row.principal,
                    "displayName": row.display_name, "reason": reason.as_str(),
                    "error": error}),
            ),
        )
        .await?;
        w.commit().await?;
        tracing::info!(session = %row.id, principal = %row.principal, reason = reason.as_str(),
            "session ended");
        if let (Some(o), Some(sealed)) = (&self.oidc, &row.refresh_sealed)
            && let Ok(grant) = RefreshGrant::open(&o.sealer, &row.id, sealed)
        {
            let rp = o.rp.clone();
            let session = row.id.clone();
            tokio::spawn(async move {
                if let Err(e) = rp.revoke(&grant).await {
                    tracing::warn!(%session, error = %e, "revoking the refresh token at the provider failed");
                }
            });
        }
        Ok(row)
    }
}

/// The CSRF token of a portal session: derived from its credential (which only the
/// session's browser holds, in an HttpOnly cookie), so nothing more is stored.
pub fn csrf_token(credential: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(b"jitgate-csrf/v1\0");
    h.update(credential.as_bytes());
    hex::encode(h.finalize())
}

/// Whether `given` is the CSRF token of `credential` (compared as hashes: no timing hint).
pub fn csrf_matches(credential: &str, given: &str) -> bool {
    use sha2::{Digest, Sha256};
    Sha256::digest(csrf_token(credential).as_bytes()) == Sha256::digest(given.as_bytes())
}

/// A new session: the credential (shown once) and whoami; where the portal goes next.
pub struct Created {
    pub granted: SessionGranted,
    pub expires_ms: i64,
    pub return_to: Option<String>,
}

/// The caller a stored session stands for.
/// The (role, scope) grants a session holds.
fn grants_of(s: &SessionRow) -> Vec<Grant> {
    s.roles
        .iter()
        .map(|g| Grant {
            role: g.role,
            scope: g.scope.clone(),
        })
        .collect()
}

pub(crate) fn caller_of(s: &SessionRow, address: IpAddr) -> Result<Caller> {
    let (issuer, subject) = match PrincipalId::from_str(&s.principal) {
        Ok(PrincipalId::Oidc { issuer, subject }) => (issuer, subject),
        Ok(PrincipalId::Link(name)) => return Ok(link::caller_of(s, name, address)),
        _ => {
            return Err(Error::corrupt(format!(
                "session {}: principal {:?} is not oidc:ISSUER#SUBJECT",
                s.id, s.principal
            )));
        }
    };
    let grants = grants_of(s);
    let groups = match &s.groups {
        Groups::Known { groups } => groups.iter().cloned().collect(),
        Groups::Unknown { .. } => Vec::new(),
    };
    Ok(Caller::person(
        Principal::Person {
            issuer,
            subject,
            display_name: s.display_name.clone(),
            session: s.id.clone(),
        },
        grants,
        address,
    )
    .with_groups(groups))
}

fn view(s: SessionRow) -> SessionView {
    let time = jitgate_api::time::format;
    SessionView {
        created_time_utc: time(s.created_ms),
        expires_time_utc: time(s.expires_ms),
        ended_time_utc: s.ended_ms.map(time),
        id: s.id,
        principal: s.principal,
        display_name: s.display_name,
        email: s.email,
        client: s.client,
        grants: s.roles,
        end_reason: s.end_reason,
        source_address: s.source_address,
    }
}
