//! Sign-in with OpenID Connect (`/auth/...`) and sessions (`/sessions`): the bodies the CLI
//! and the controller exchange. The controller brokers every flow; the CLI never holds an
//! identity provider's token, only jitgate's own session credential.

use serde::{Deserialize, Serialize};

use crate::rights::{Role, Scope};
use crate::wire::wire_enum;

/// `POST /auth/login`: start the code flow for the CLI's loopback listener (RFC 8252).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoginBody {
    /// `http://127.0.0.1:PORT/callback` or `http://[::1]:PORT/callback`.
    pub redirect_uri: String,
}

/// The answer to `POST /auth/login`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LoginStarted {
    /// Where to send the browser.
    pub authorize_url: String,
    /// The `state` the loopback listener must receive back.
    pub state: String,
    /// The sealed sign-in state, handed back with the callback.
    pub handle: String,
}

/// `POST /auth/callback`: what the loopback listener received, as received.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallbackBody {
    pub handle: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
}

/// The answer to `POST /auth/device`: show `userCode` and `verificationUri` to the person.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStarted {
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_uri_complete: Option<String>,
    /// Seconds until the code expires.
    pub expires_in: u64,
    /// Seconds between polls the provider asks for.
    pub interval: u64,
    /// The sealed device flow, handed back with each poll.
    pub handle: String,
}

/// `POST /auth/device/poll`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DevicePollBody {
    pub handle: String,
}

/// A new session: the credential (shown once: the controller keeps only its hash) and who
/// it stands for.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionGranted {
    /// The bearer credential (`jitsess_...`).
    pub credential: String,
    pub whoami: Whoami,
}

wire_enum! {
    /// What a caller authenticated with.
    pub enum CallerKind("caller kind", Other) {
        Token = "token",
        Session = "session",
        Local = "local",
    }
}

/// `GET /auth/whoami`: the caller, its groups, the roles and scopes they map to, the end of
/// its session, and its address as the controller sees it ("My IP").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Whoami {
    pub kind: CallerKind,
    /// `token:NAME` or `oidc:ISSUER#SUBJECT`.
    pub principal: String,
    /// For display only.
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub groups: GroupsView,
    pub grants: Vec<GrantView>,
    /// Why the caller holds no role, and what to ask for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// When the session ends at the latest (its absolute cap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_ends_utc: Option<String>,
    pub caller_address: String,
}

/// The caller's groups, or why they are unknown.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct GroupsView {
    pub known: bool,
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unknown_reason: Option<String>,
}

/// One role the caller holds within one scope, and the groups that gave it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    pub role: Role,
    pub scope: Scope,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub via_groups: Vec<String>,
}

wire_enum! {
    /// Why a session ended.
    pub enum SessionEndReason("session end reason", Other) {
        SignedOut = "signed_out",
        Revoked = "revoked",
        RefreshFailed = "refresh_failed",
    }
}

/// One session in `GET /sessions` (never its credential).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub id: String,
    pub principal: String,
    pub display_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    /// `cli` or `portal`.
    pub client: String,
    pub grants: Vec<GrantView>,
    pub created_time_utc: String,
    pub expires_time_utc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_time_utc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<SessionEndReason>,
    pub source_address: String,
}
