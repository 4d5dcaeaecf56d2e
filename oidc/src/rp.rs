//! The relying party: starts and finishes the code flow (portal and CLI), runs the device
//! flow, refreshes, and turns each validated ID token into an [`Identity`].

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use openidconnect::core::{CoreDeviceAuthorizationResponse, CoreResponseType};
use openidconnect::{
    AuthType, AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    DeviceCodeErrorResponseType, EndpointNotSet, EndpointSet, ErrorResponseType, IssuerUrl, Nonce,
    OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, RefreshToken,
    RequestTokenError, Scope, StandardErrorResponse, TokenResponse as _,
};

use crate::config::OidcConfig;
use crate::error::{Error, StateError, chain};
use crate::files::read_secret;
use crate::grants::{PendingDevice, RefreshGrant};
use crate::http::{HttpClient, TlsSetupError};
use crate::identity::{ClaimNames, Identity, Principal};
use crate::login::{
    CheckedCallback, ClientKind, LOGIN_STATE_LIFETIME, LoginRequest, PendingLogin, now_unix,
};
use crate::provider::{Discovered, Provider, ProviderStatus};
use crate::replay::ReplayGuard;
use crate::types::{IdToken, OidcClient, TokenResponse};
use crate::validate::{Expect, validate, wants_new_keys};

/// Longest device flow accepted, whatever the provider offers.
const MAX_DEVICE_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Knobs that are not operator configuration.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the provider sends the portal's browser back: the controller's public https
    /// URL plus `/auth/callback`. Without it there is no portal sign-in.
    pub portal_redirect: Option<String>,
    /// An unknown `kid` fetches the key set again at most this often.
    pub jwks_min_refresh: Duration,
    /// Background discovery retries back off up to this interval.
    pub discovery_retry_max: Duration,
    /// Per request to the provider.
    pub http_timeout: Duration,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            portal_redirect: None,
            jwks_min_refresh: Duration::from_secs(10),
            discovery_retry_max: Duration::from_secs(60),
            http_timeout: Duration::from_secs(15),
        }
    }
}

/// The relying party cannot start: a file or the portal redirect is unusable. (An
/// unreachable provider is not one of these: it is retried.)
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("[oidc] {key}: {detail}")]
    SecretFile { key: &'static str, detail: String },
    #[error("[oidc] {0}")]
    Tls(#[from] TlsSetupError),
    #[error("portal redirect URI {uri:?}: {reason}")]
    PortalRedirect { uri: String, reason: String },
    #[error("[oidc] issuer: {0}")]
    Issuer(String),
}

/// A finished sign-in (code flow, device flow or refresh).
#[derive(Clone, Debug)]
pub struct SignIn {
    pub identity: Identity,
    /// For refreshing; seal it ([`RefreshGrant::seal`]) before storing. `None` when the
    /// provider issued none (then the session cannot be refreshed and ends at its first
    /// refresh).
    pub refresh: Option<RefreshGrant>,
    pub client: ClientKind,
}

/// A started code flow: send the browser to `authorize_url`; keep `pending` sealed.
#[derive(Clone, Debug)]
pub struct LoginStart {
    pub authorize_url: String,
    pub pending: PendingLogin,
}

/// A started device flow: show `user_code` and `verification_uri` to the person (as text);
/// the CLI keeps `pending` sealed and polls.
#[derive(Clone, Debug)]
pub struct DeviceStart {
    pub user_code: String,
    pub verification_uri: String,
    pub verification_uri_complete: Option<String>,
    pub expires_in: Duration,
    pub interval: Duration,
    pub pending: PendingDevice,
}

/// One poll of a device flow.
#[derive(Clone, Debug)]
pub enum DevicePoll {
    /// Not approved yet: poll again.
    Pending,
    Complete(SignIn),
}

struct ClientCreds {
    id: String,
    secret: Option<ClientSecret>,
}

struct Inner {
    issuer: IssuerUrl,
    portal: Option<(ClientCreds, RedirectUrl)>,
    cli: Option<ClientCreds>,
    scopes: Vec<String>,
    claims: ClaimNames,
    auth_params: Vec<(String, String)>,
    provider: Provider,
    retry: Mutex<Option<tokio::task::AbortHandle>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut r) = self.retry.lock()
            && let Some(h) = r.take()
        {
            h.abort();
        }
    }
}

/// jitgate's OpenID Connect relying party. Cheap to clone; one per controller process.
#[derive(Clone)]
pub struct RelyingParty {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for RelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelyingParty")
            .field("issuer", &self.inner.issuer.as_str())
            .finish_non_exhaustive()
    }
}

fn secret(key: &'static str, path: &std::path::Path) -> Result<ClientSecret, SetupError> {
    let text = read_secret(path).map_err(|e| SetupError::SecretFile {
        key,
        detail: e.to_string(),
    })?;
    let s = text.trim_end_matches(['\r', '\n']);
    if s.is_empty() {
        return Err(SetupError::SecretFile {
            key,
            detail: format!("{} is empty", path.display()),
        });
    }
    Ok(ClientSecret::new(s.to_string()))
}

impl RelyingParty {
    /// Reads the files `[oidc]` names, then discovers the provider. A provider that cannot be
    /// discovered is no error here: it is logged, [`RelyingParty::status`] says why, sign-ins
    /// fail with [`Error::ProviderUnavailable`], and discovery is retried in the background
    /// (and on demand) until it succeeds. Must run inside a Tokio runtime.
    pub async fn start<R, S>(
        config: &OidcConfig<R, S>,
        options: Options,
    ) -> Result<Self, SetupError> {
        let issuer =
            IssuerUrl::new(config.issuer.clone()).map_err(|e| SetupError::Issuer(e.to_string()))?;
        let http = HttpClient::new(config.ca_file.as_deref(), options.http_timeout)?;
        let portal = match (&config.client_secret_file, &options.portal_redirect) {
            (Some(path), Some(uri)) => {
                let bad = |reason: String| SetupError::PortalRedirect {
                    uri: uri.clone(),
                    reason,
                };
                let url = openidconnect::url::Url::parse(uri).map_err(|e| bad(e.to_string()))?;
                if url.scheme() != "https" {
                    return Err(bad("must be https (the session cookie is Secure)".into()));
                }
                let redirect = RedirectUrl::new(uri.clone()).map_err(|e| bad(e.to_string()))?;
                let creds = ClientCreds {
                    id: config.client_id.clone(),
                    secret: Some(secret("client_secret_file", path)?),
                };
                Some((creds, redirect))
            }
            (Some(_), None) => {
                tracing::warn!(issuer = %config.issuer,
                    "client_secret_file is set but no portal redirect URI was given: portal sign-in is off");
                None
            }
            _ => None,
        };
        let cli = match &config.cli_client_id {
            Some(id) => Some(ClientCreds {
                id: id.clone(),
                secret: match &config.cli_client_secret_file {
                    Some(p) => Some(secret("cli_client_secret_file", p)?),
                    None => None,
                },
            }),
            None => None,
        };
        let inner = Arc::new(Inner {
            issuer: issuer.clone(),
            portal,
            cli,
            scopes: config
                .scopes
                .iter()
                .filter(|s| *s != "openid")
                .cloned()
                .collect(),
            claims: ClaimNames {
                name: config.name_claim.clone(),
                groups: config.groups_claim.clone(),
            },
            auth_params: config
                .auth_params
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            provider: Provider::new(issuer, http, options.jwks_min_refresh),
            retry: Mutex::new(None),
        });
        if inner.provider.attempt(None).await.is_err() {
            let handle = tokio::spawn(retry_discovery(
                Arc::downgrade(&inner),
                options.discovery_retry_max,
            ));
            if let Ok(mut r) = inner.retry.lock() {
                *r = Some(handle.abort_handle());
            }
        }
        Ok(RelyingParty { inner })
    }

    pub fn issuer(&self) -> &str {
        self.inner.issuer.as_str()
    }

    /// Whether sign-in works now, and if not, why.
    pub fn status(&self) -> ProviderStatus {
        self.inner.provider.status()
    }

    /// Starts a code flow with PKCE (S256), `state` and `nonce`.
    pub async fn start_login(&self, request: LoginRequest) -> Result<LoginStart, Error> {
        let d = self.inner.provider.ready().await?;
        let (creds, redirect) = self.creds(&request)?;
        let client = self.client(&d, creds, Some(redirect));
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scopes(self.inner.scopes.iter().cloned().map(Scope::new))
            .set_pkce_challenge(challenge);
        if request.client() == ClientKind::Portal {
            req = req.add_extra_param("response_mode", "query");
        }
        for (k, v) in &self.inner.auth_params {
            req = req.add_extra_param(k.clone(), v.clone());
        }
        let (url, state, nonce) = req.url();
        let lifetime = i64::try_from(LOGIN_STATE_LIFETIME.as_secs()).unwrap_or(600);
        Ok(LoginStart {
            authorize_url: url.to_string(),
            pending: PendingLogin {
                request,
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                verifier: verifier.secret().clone(),
                issuer: self.inner.issuer.to_string(),
                client_id: creds.id.clone(),
                expires_at: now_unix() + lifetime,
            },
        })
    }

    /// Finishes a code flow: marks the callback used (refusing a replay before anything goes
    /// to the provider), redeems the code with the PKCE verifier, and validates the ID token
    /// (with the nonce of this sign-in).
    pub async fn finish_login<G: ReplayGuard>(
        &self,
        callback: CheckedCallback,
        guard: &G,
    ) -> Result<SignIn, Error> {
        let p = &callback.pending;
        self.same_provider(&p.issuer, &p.client_id, p.request.client())?;
        if !guard
            .first_use(callback.replay_key(), callback.keep_until())
            .await
            .map_err(Error::ReplayStore)?
        {
            return Err(Error::Replayed);
        }
        let d = self.inner.provider.ready().await?;
        if d.iss_on_callbacks && !callback.iss_present {
            return Err(
                StateError::Missing("iss (the provider sends it on every callback)").into(),
            );
        }
        let (creds, redirect) = self.creds(&p.request)?;
        let client = self.client(&d, creds, Some(redirect));
        let token = client
            .exchange_code(AuthorizationCode::new(callback.code.clone()))
            .set_pkce_verifier(PkceCodeVerifier::new(p.verifier.clone()))
            .request_async(self.inner.provider.http())
            .await
            .map_err(token_error)?;
        let nonce = Nonce::new(p.nonce.clone());
        self.sign_in(&d, &token, creds, Some(&nonce), p.request.client(), None)
            .await
    }

    /// Starts a device flow (RFC 8628) as the CLI's public client.
    pub async fn start_device(&self) -> Result<DeviceStart, Error> {
        let d = self.inner.provider.ready().await?;
        let creds = self.inner.cli.as_ref().ok_or(Error::CliNotConfigured)?;
        let client = self.device_client(&d, creds)?;
        let resp: CoreDeviceAuthorizationResponse = client
            .exchange_device_code()
            .add_scopes(self.inner.scopes.iter().cloned().map(Scope::new))
            .request_async(self.inner.provider.http())
            .await
            .map_err(token_error)?;
        if resp.verification_uri().url().scheme() != "https" {
            return Err(Error::TokenRequest(
                "the provider's device verification URI is not https".into(),
            ));
        }
        let expires_in = resp.expires_in().min(MAX_DEVICE_LIFETIME);
        let response = serde_json::to_value(&resp)
            .map_err(|e| Error::TokenRequest(format!("device authorization response: {e}")))?;
        Ok(DeviceStart {
            user_code: resp.user_code().secret().clone(),
            verification_uri: resp.verification_uri().to_string(),
            verification_uri_complete: resp.verification_uri_complete().map(|u| u.secret().clone()),
            expires_in,
            interval: resp.interval(),
            pending: PendingDevice {
                response,
                issuer: self.inner.issuer.to_string(),
                client_id: creds.id.clone(),
                expires_at: now_unix() + i64::try_from(expires_in.as_secs()).unwrap_or(0),
            },
        })
    }

    /// Polls the provider for up to `wait` (at least one request, at the provider's
    /// interval): the controller's poll endpoint is a long poll, so the CLI asks every
    /// `wait` rather than every few seconds.
    pub async fn poll_device(
        &self,
        pending: &PendingDevice,
        wait: Duration,
    ) -> Result<DevicePoll, Error> {
        self.same_provider(&pending.issuer, &pending.client_id, ClientKind::Cli)?;
        if now_unix() > pending.expires_at {
            return Err(Error::DeviceExpired);
        }
        let d = self.inner.provider.ready().await?;
        let creds = self.inner.cli.as_ref().ok_or(Error::CliNotConfigured)?;
        let client = self.device_client(&d, creds)?;
        let resp: CoreDeviceAuthorizationResponse =
            serde_json::from_value(pending.response.clone()).map_err(|_| StateError::Unsealable)?;
        let wait = wait.max(Duration::from_secs(1));
        let result = client
            .exchange_device_access_token(&resp)
            .request_async(self.inner.provider.http(), tokio::time::sleep, Some(wait))
            .await;
        let token = match result {
            Ok(t) => t,
            Err(RequestTokenError::ServerResponse(e)) => {
                return match e.error() {
                    // The library's own deadline (our `wait`) ends a poll as "expired" too.
                    DeviceCodeErrorResponseType::ExpiredToken
                        if now_unix() <= pending.expires_at =>
                    {
                        Ok(DevicePoll::Pending)
                    }
                    DeviceCodeErrorResponseType::ExpiredToken => Err(Error::DeviceExpired),
                    DeviceCodeErrorResponseType::AccessDenied => Err(Error::DeviceDenied),
                    DeviceCodeErrorResponseType::AuthorizationPending
                    | DeviceCodeErrorResponseType::SlowDown => Ok(DevicePoll::Pending),
                    _ => Err(refused(&e)),
                };
            }
            Err(e) => return Err(token_error(e)),
        };
        self.sign_in(&d, &token, creds, None, ClientKind::Cli, None)
            .await
            .map(DevicePoll::Complete)
    }

    /// Refreshes with the provider, re-reading the person's groups from the new ID token.
    /// Any error means: end the session (fail closed, also when the provider is down).
    pub async fn refresh(
        &self,
        grant: &RefreshGrant,
        principal: &Principal,
    ) -> Result<SignIn, Error> {
        if principal.issuer() != self.inner.issuer.as_str() {
            return Err(StateError::OtherProvider.into());
        }
        let d = self.inner.provider.ready().await?;
        let creds = match grant.client {
            ClientKind::Portal => {
                &self
                    .inner
                    .portal
                    .as_ref()
                    .ok_or(Error::PortalNotConfigured)?
                    .0
            }
            ClientKind::Cli => self.inner.cli.as_ref().ok_or(Error::CliNotConfigured)?,
        };
        let client = self.client(&d, creds, None);
        let token = client
            .exchange_refresh_token(&RefreshToken::new(grant.token.clone()))
            .request_async(self.inner.provider.http())
            .await
            .map_err(token_error)?;
        let mut signed = self
            .sign_in(&d, &token, creds, None, grant.client, Some(principal))
            .await?;
        // Providers that do not rotate refresh tokens answer without one: keep the old.
        if signed.refresh.is_none() {
            signed.refresh = Some(grant.clone());
        }
        Ok(signed)
    }

    /// Revokes the provider's refresh token (RFC 7009), at sign-out or session revocation,
    /// so that it cannot outlive the session. `Ok(false)`: the provider has no revocation
    /// endpoint (the token then lives until it expires at the provider).
    pub async fn revoke(&self, grant: &RefreshGrant) -> Result<bool, Error> {
        let d = self.inner.provider.ready().await?;
        let Some(url) = d.revocation_url.clone() else {
            return Ok(false);
        };
        let creds = self.refresh_creds(grant)?;
        let client = self.client(&d, creds, None).set_revocation_url(url);
        let token = RefreshToken::new(grant.token.clone());
        client
            .revoke_token(token.into())
            .map_err(|e| Error::TokenRequest(e.to_string()))?
            .request_async(self.inner.provider.http())
            .await
            .map_err(token_error)?;
        Ok(true)
    }

    fn refresh_creds(&self, grant: &RefreshGrant) -> Result<&ClientCreds, Error> {
        Ok(match grant.client {
            ClientKind::Portal => {
                &self
                    .inner
                    .portal
                    .as_ref()
                    .ok_or(Error::PortalNotConfigured)?
                    .0
            }
            ClientKind::Cli => self.inner.cli.as_ref().ok_or(Error::CliNotConfigured)?,
        })
    }

    async fn sign_in(
        &self,
        d: &Discovered,
        token: &TokenResponse,
        creds: &ClientCreds,
        nonce: Option<&Nonce>,
        client: ClientKind,
        expected: Option<&Principal>,
    ) -> Result<SignIn, Error> {
        let id_token = token.id_token().ok_or(Error::NoIdToken)?;
        let claims = self.validate(d, id_token, &creds.id, nonce).await?;
        let identity =
            Identity::from_claims(self.inner.issuer.as_str(), &claims, &self.inner.claims)?;
        if let Some(p) = expected
            && *p != identity.principal
        {
            return Err(crate::error::TokenRejected::SubjectChanged {
                expected: p.subject().to_string(),
                found: identity.principal.subject().to_string(),
            }
            .into());
        }
        Ok(SignIn {
            identity,
            refresh: token.refresh_token().map(|t| RefreshGrant {
                client,
                token: t.secret().clone(),
            }),
            client,
        })
    }

    /// Validates with the cached keys; a token signed by a key not among them fetches the
    /// key set again (rate-limited) and is validated once more.
    async fn validate(
        &self,
        d: &Discovered,
        token: &IdToken,
        client_id: &str,
        nonce: Option<&Nonce>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, Error> {
        let expect = Expect {
            issuer: &self.inner.issuer,
            client_id,
            nonce,
        };
        let (jwks, generation) = d.keys();
        match validate(token, &jwks, &expect) {
            Err(e) if wants_new_keys(&e) => {
                if self.inner.provider.refresh_keys(d, generation).await {
                    let (jwks, _) = d.keys();
                    Ok(validate(token, &jwks, &expect)?)
                } else {
                    Err(e.into())
                }
            }
            other => Ok(other?),
        }
    }

    fn same_provider(&self, issuer: &str, client_id: &str, kind: ClientKind) -> Result<(), Error> {
        let ours = match kind {
            ClientKind::Portal => self.inner.portal.as_ref().map(|p| p.0.id.as_str()),
            ClientKind::Cli => self.inner.cli.as_ref().map(|c| c.id.as_str()),
        };
        if issuer != self.inner.issuer.as_str() || ours != Some(client_id) {
            return Err(StateError::OtherProvider.into());
        }
        Ok(())
    }

    fn creds(&self, request: &LoginRequest) -> Result<(&ClientCreds, RedirectUrl), Error> {
        match request {
            LoginRequest::Portal { .. } => {
                let (c, r) = self
                    .inner
                    .portal
                    .as_ref()
                    .ok_or(Error::PortalNotConfigured)?;
                Ok((c, r.clone()))
            }
            LoginRequest::Cli { redirect } => {
                let c = self.inner.cli.as_ref().ok_or(Error::CliNotConfigured)?;
                let r = RedirectUrl::new(redirect.as_str().to_string()).map_err(|_| {
                    Error::InvalidRedirect {
                        uri: redirect.as_str().to_string(),
                        reason: "not a URL",
                    }
                })?;
                Ok((c, r))
            }
        }
    }

    fn client(
        &self,
        d: &Discovered,
        creds: &ClientCreds,
        redirect: Option<RedirectUrl>,
    ) -> OidcClient<EndpointNotSet> {
        // Keys are not the client's business here: `validate` checks tokens.
        let mut c: OidcClient<EndpointNotSet> = openidconnect::Client::new(
            ClientId::new(creds.id.clone()),
            self.inner.issuer.clone(),
            openidconnect::JsonWebKeySet::new(vec![]),
        )
        .set_auth_uri(d.auth_url.clone())
        .set_token_uri(d.token_url.clone())
        .set_auth_type(if d.basic_auth {
            AuthType::BasicAuth
        } else {
            AuthType::RequestBody
        });
        if let Some(s) = &creds.secret {
            c = c.set_client_secret(s.clone());
        }
        if let Some(r) = redirect {
            c = c.set_redirect_uri(r);
        }
        c
    }

    fn device_client(
        &self,
        d: &Discovered,
        creds: &ClientCreds,
    ) -> Result<OidcClient<EndpointSet>, Error> {
        let url = d
            .device_url
            .clone()
            .ok_or_else(|| Error::DeviceFlowUnsupported {
                issuer: self.inner.issuer.to_string(),
            })?;
        Ok(self
            .client(d, creds, None)
            .set_device_authorization_url(url))
    }
}

/// Discovery again and again, backing off to `max`, until it succeeds or the relying party
/// is dropped.
async fn retry_discovery(inner: Weak<Inner>, max: Duration) {
    let mut delay = Duration::from_secs(1).min(max);
    loop {
        tokio::time::sleep(delay).await;
        let Some(rp) = inner.upgrade() else {
            return;
        };
        if rp.provider.attempt(None).await.is_ok() {
            return;
        }
        drop(rp);
        delay = (delay * 2).min(max);
    }
}

fn refused<T: ErrorResponseType + std::fmt::Display>(e: &StandardErrorResponse<T>) -> Error {
    let error = serde_json::to_value(e.error())
        .ok()
        .and_then(|v| v.as_str().map(|s| s.chars().take(100).collect()))
        .unwrap_or_else(|| "unknown_error".into());
    Error::ProviderRefused {
        error,
        description: e.error_description().map(|d| d.chars().take(300).collect()),
    }
}

fn token_error<RE, T>(e: RequestTokenError<RE, StandardErrorResponse<T>>) -> Error
where
    RE: std::error::Error + 'static,
    T: ErrorResponseType + std::fmt::Display + 'static,
{
    match e {
        RequestTokenError::ServerResponse(r) => refused(&r),
        RequestTokenError::Request(e) => Error::TokenRequest(chain(&e)),
        // The body may hold tokens: it stays out of the message.
        RequestTokenError::Parse(e, _body) => {
            Error::TokenRequest(format!("unreadable response: {}", chain(&e)))
        }
        RequestTokenError::Other(m) => Error::TokenRequest(m),
    }
}
