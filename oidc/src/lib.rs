//! jitgate as an OpenID Connect relying party.
//!
//! This crate owns what jitgate does as a client of an OpenID provider: the `[oidc]`
//! configuration ([`OidcConfig`]), discovery and the provider's signing keys, the
//! authorization code flow with PKCE (S256), `state` and `nonce` for the portal (a
//! confidential client, `response_mode=query`) and for `jit login` (a public client with a
//! loopback redirect, RFC 8252), the device authorization grant (RFC 8628), refresh, ID token
//! validation, the [`Identity`] a token names (principal `oidc:ISSUER#SUBJECT`, display name,
//! email, [`Groups`]), the mapping from groups to roles ([`map_roles`]), and the sealing of
//! what a sign-in keeps between its steps ([`Sealer`]). It serves no HTTP and stores nothing;
//! the controller does both, with the calls below. JOSE, discovery and the OAuth requests are
//! the `openidconnect` crate's; this crate chooses its settings and checks what it leaves to
//! its callers (`azp`, `nbf`, `iat`, RFC 9207 `iss` on callbacks, single-use callbacks).
//!
//! What is validated and why, and how to set up Entra ID, Okta, Keycloak and Google:
//! `docs/identity.md`.
//!
//! # The flows
//! The controller brokers every flow: browsers and the CLI bring it the authorization code
//! (or poll it for the device code), it redeems them, and it issues its own session
//! credential. A provider's token is never accepted from a caller.
//!
//! - Code flow: [`RelyingParty::start_login`] gives the URL to send the browser to and a
//!   [`PendingLogin`] (state, nonce, PKCE verifier, return path or loopback redirect), which
//!   the controller seals ([`PendingLogin::seal`]) into the portal's pre-sign-in cookie or
//!   hands to the CLI. At the callback, [`PendingLogin::open`] and
//!   [`PendingLogin::check_callback`] check the sealed state, its expiry and the `state`
//!   parameter before anything goes to the provider; [`RelyingParty::finish_login`] marks the
//!   callback used (a [`ReplayGuard`]), redeems the code with the verifier and validates the
//!   ID token with the nonce: a [`SignIn`].
//! - Device flow: [`RelyingParty::start_device`], then [`RelyingParty::poll_device`] (a long
//!   poll) with the [`PendingDevice`] the CLI holds sealed.
//! - Refresh: [`RelyingParty::refresh`] with the [`RefreshGrant`] (stored sealed by
//!   [`RefreshGrant::seal`], bound to one session id) re-reads the groups from a new ID
//!   token; any error means: end the session. [`RelyingParty::revoke`] revokes the provider's
//!   refresh token at sign-out.
//!
//! An unreachable provider does not stop the controller: [`RelyingParty::start`] fails only
//! on unusable files; discovery is retried in the background, [`RelyingParty::status`] says
//! why sign-in is unavailable, and API tokens keep working.
//!
//! # How the controller plugs it in
//! **Configuration.** `Config` gains `oidc: Option<OidcConfig<Role, Scope>>` (Role and Scope
//! implement `FromStr`, so a bad role or scope in `[[oidc.roles]]` stops the controller with
//! the row named). `OidcConfig::token_role_allowed` guards `token create` (`token_roles`).
//!
//! **Start.** A sealing key file in the state directory (`SealKey::create_file` at `init`,
//! mode 0600; every controller on one database gets the same file), `Sealer::new`, and
//! `RelyingParty::start(&cfg, Options { portal_redirect: Some(PUBLIC_URL + "/auth/callback"),
//! ..})`. `status()` goes into the health output.
//!
//! **Sessions table** (controller migration 0012, `controller/src/store/sessions.rs`; there
//! the times are in milliseconds, `*_ms`, like the controller's other tables):
//! ```sql
//! CREATE TABLE sessions (
//!   id             TEXT PRIMARY KEY,     -- random, for list/revoke; not the credential
//!   token_hash     TEXT NOT NULL UNIQUE, -- SHA-256 of the session credential, as for API tokens
//!   principal      TEXT NOT NULL,        -- oidc:ISSUER#SUBJECT
//!   display_name   TEXT NOT NULL,
//!   email          TEXT,
//!   groups         TEXT NOT NULL,        -- JSON of Groups: known list, or unknown with reason
//!   roles          TEXT NOT NULL,        -- JSON [(role, scope, via_groups)] from map_roles
//!   client         TEXT NOT NULL,        -- ClientKind::as_str: portal | cli
//!   refresh_sealed TEXT,                 -- RefreshGrant::seal(sealer, id)
//!   created_at     INTEGER NOT NULL,
//!   expires_at     INTEGER NOT NULL,     -- created_at + session_lifetime: absolute cap
//!   refresh_due_at INTEGER NOT NULL,     -- at most 15 minutes ahead, never past expires_at
//!   source_address TEXT NOT NULL,
//!   ended_at       INTEGER,
//!   end_reason     TEXT                  -- an enum: signed_out | revoked | refresh_failed
//! );
//! CREATE INDEX sessions_by_principal ON sessions(principal);
//! CREATE INDEX sessions_refresh_due ON sessions(refresh_due_at) WHERE ended_at IS NULL;
//! CREATE TABLE oidc_used_callbacks (   -- the ReplayGuard: INSERT fails on a replay
//!   replay_key TEXT PRIMARY KEY,       -- hex of ReplayKey
//!   keep_until INTEGER NOT NULL        -- CheckedCallback::keep_until; older rows deleted
//! );
//! ```
//! A session authenticates only while `ended_at IS NULL`, `now < expires_at` and
//! `now < refresh_due_at + grace` (a stalled refresher fails closed).
//!
//! **Refresh.** A sweep (under the lease with PostgreSQL) takes sessions whose
//! `refresh_due_at` has come, opens `refresh_sealed`, calls `refresh(grant, principal)`; on
//! success it stores the new groups, `map_roles` of them, the re-sealed (possibly rotated)
//! grant and the next due time; on any error it ends the session (`refresh_failed`, the error
//! in the activity log).
//!
//! **API routes** (JSON, camelCase; the bearer is jitgate's session credential):
//! - `POST /api/v1/auth/login {redirectUri}` (rate-limited, unauthenticated): the CLI's
//!   loopback URI, checked by [`LoopbackRedirect::parse`]; answers `{authorizeUrl, state,
//!   handle}` where `handle` is the sealed [`PendingLogin`].
//! - `POST /api/v1/auth/callback {handle, code, state, iss, error, errorDescription}`:
//!   `PendingLogin::open` + `check_callback` + `finish_login`; answers the new session
//!   credential (shown once), its end, the identity and the roles, or the [`NoRole`] reason.
//! - `POST /api/v1/auth/device` → `{userCode, verificationUri, verificationUriComplete,
//!   expiresIn, interval, handle}`; `POST /api/v1/auth/device/poll {handle}` → 202 while
//!   pending (a long poll of about 20 s), 200 with the session when approved.
//! - `POST /api/v1/auth/logout`: ends the session, `revoke`s the refresh token.
//! - `GET /api/v1/auth/whoami`: principal, display name, groups (or why unknown), roles and
//!   scopes, the session's end, "My IP".
//! - `GET /api/v1/sessions`, `DELETE /api/v1/sessions/{id}` (admin; also
//!   `jit-controller session list|revoke`).
//!
//! **CLI.** `jit login` binds `127.0.0.1:0` (or `[::1]:0`), posts its redirect URI, opens the
//! browser at `authorizeUrl` (`--no-browser` prints it), takes one
//! `GET /callback?code=..&state=..&iss=..` on the listener, compares `state`, answers the
//! browser with a static page, and posts the handle and the parameters as received. It never
//! sees a provider token. `--device` prints the user code and URI (as text; they come from
//! the provider) and polls.
//!
//! **Portal.** `GET /auth/login?return=PATH` (rate-limited): `start_login(Portal)`, cookie
//! `__Host-jitgate-login` = sealed state (Secure, HttpOnly, SameSite=Lax, Path=/, Max-Age =
//! [`LOGIN_STATE_LIFETIME`]), 303 to the provider; no database write. `GET /auth/callback`:
//! open the cookie, `check_callback`, `finish_login`, a fresh session id and credential in
//! `__Host-jitgate-session`, the login cookie cleared, 303 to the return path.
//! `POST /auth/logout` (CSRF token and Origin checked) ends the session.

mod config;
mod error;
mod files;
mod grants;
mod http;
mod identity;
mod login;
mod provider;
mod redirect;
mod replay;
mod roles;
mod rp;
mod seal;
mod types;
mod validate;

pub use config::{ConfigError, MAX_SESSION_LIFETIME, MIN_SESSION_LIFETIME, OidcConfig};
pub use error::{Error, StateError, TokenRejected};
pub use files::SecretFileError;
pub use grants::{PendingDevice, RefreshGrant};
pub use http::TlsSetupError;
pub use identity::{Email, Groups, GroupsUnknown, Identity, Principal};
pub use login::{
    CallbackParams, CheckedCallback, ClientKind, LOGIN_STATE_LIFETIME, LoginRequest, PendingLogin,
    ReplayKey,
};
pub use provider::ProviderStatus;
pub use redirect::{LoopbackRedirect, ReturnPath};
pub use replay::{MemoryReplayGuard, ReplayGuard, StoreError};
pub use roles::{NoRole, RoleGrant, RoleRule, map_roles};
pub use rp::{DevicePoll, DeviceStart, LoginStart, Options, RelyingParty, SetupError, SignIn};
pub use seal::{KEY_LEN, KeyFileError, SealKey, Sealer, Unsealable};
pub use validate::{ALLOWED_ALGS, CLOCK_SKEW_SECS, MAX_ID_TOKEN_AGE_SECS};
