//! `[oidc]` in `controller.toml`: read, checked whole, unknown keys refused.
//!
//! The controller embeds [`OidcConfig<Role, Scope>`] in its own configuration
//! (`oidc: Option<OidcConfig<Role, Scope>>`); every check below runs while the TOML is read,
//! so a bad `[oidc]` stops the controller with the key named. Files (secret, CA) are read
//! when the relying party starts ([`crate::RelyingParty::start`]).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

use crate::roles::RoleRule;

/// Shortest and longest `session_lifetime`.
pub const MIN_SESSION_LIFETIME: Duration = Duration::from_secs(5 * 60);
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// Authorization request parameters the relying party sets itself; `auth_params` may not.
const RESERVED_PARAMS: &[&str] = &[
    "client_id",
    "redirect_uri",
    "response_type",
    "response_mode",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "request",
    "request_uri",
];

/// The validated `[oidc]` table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    try_from = "RawOidcConfig<R, S>",
    bound(deserialize = "R: FromStr, R::Err: fmt::Display, S: FromStr, S::Err: fmt::Display")
)]
pub struct OidcConfig<R = String, S = String> {
    /// The issuer exactly as the provider writes it in its tokens (`iss`): https, no query or
    /// fragment. Discovery is `ISSUER/.well-known/openid-configuration`.
    pub issuer: String,
    /// The portal's confidential client.
    pub client_id: String,
    /// The portal client's secret (absolute path, mode 0600). Without it there is no portal
    /// sign-in; the CLI flows still work.
    pub client_secret_file: Option<PathBuf>,
    /// The CLI's public client (loopback redirect and device flow). Without it there is no
    /// `jit login`.
    pub cli_client_id: Option<String>,
    /// Only for providers that demand a secret even from installed apps (Google's "Desktop
    /// app" clients); it stays on the controller, which redeems the CLI's codes.
    pub cli_client_secret_file: Option<PathBuf>,
    /// Requested scopes; must contain `openid`. Add `offline_access` where the provider
    /// needs it for a refresh token (Entra ID, Okta).
    pub scopes: Vec<String>,
    /// The claim with the person's groups (a list of names, or one name).
    pub groups_claim: String,
    /// The claim shown as the person's name (display only).
    pub name_claim: String,
    /// Absolute cap of a session, whatever the refreshes.
    pub session_lifetime: Duration,
    /// Every row whose group the person is in applies (a union).
    pub roles: Vec<RoleRule<R, S>>,
    /// PEM file with the CA certificate(s) to trust for the provider, instead of the system
    /// roots. There is no way to switch TLS verification off.
    pub ca_file: Option<PathBuf>,
    /// Roles new API tokens may carry while SSO is on; `None`: any.
    pub token_roles: Option<Vec<R>>,
    /// Extra authorization request parameters, e.g. Google's `access_type = "offline"`.
    pub auth_params: BTreeMap<String, String>,
}

impl<R, S> OidcConfig<R, S> {
    /// Whether API tokens may be created with `role` (`token_roles`).
    pub fn token_role_allowed(&self, role: &R) -> bool
    where
        R: PartialEq,
    {
        self.token_roles
            .as_ref()
            .is_none_or(|allowed| allowed.contains(role))
    }
}

impl<R, S> OidcConfig<R, S>
where
    R: FromStr,
    R::Err: fmt::Display,
    S: FromStr,
    S::Err: fmt::Display,
{
    /// Reads a document whose `[oidc]` table is the whole of interest (tests, tools).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        #[serde(bound(
            deserialize = "R: FromStr, R::Err: fmt::Display, S: FromStr, S::Err: fmt::Display"
        ))]
        struct Doc<R, S> {
            oidc: OidcConfig<R, S>,
        }
        toml::from_str::<Doc<R, S>>(text)
            .map(|d| d.oidc)
            .map_err(|e| ConfigError(e.to_string()))
    }
}

/// A `[oidc]` table that cannot be used; the message names the key.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("[oidc]: {0}")]
pub struct ConfigError(pub String);

fn default_scopes() -> Vec<String> {
    ["openid", "profile", "email"].map(String::from).to_vec()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_name_claim() -> String {
    "preferred_username".into()
}
fn default_session_lifetime() -> String {
    "PT8H".into()
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    bound(deserialize = "R: FromStr, R::Err: fmt::Display, S: FromStr, S::Err: fmt::Display")
)]
struct RawOidcConfig<R, S> {
    issuer: String,
    client_id: String,
    #[serde(default)]
    client_secret_file: Option<PathBuf>,
    #[serde(default)]
    cli_client_id: Option<String>,
    #[serde(default)]
    cli_client_secret_file: Option<PathBuf>,
    #[serde(default = "default_scopes")]
    scopes: Vec<String>,
    #[serde(default = "default_groups_claim")]
    groups_claim: String,
    #[serde(default = "default_name_claim")]
    name_claim: String,
    #[serde(default = "default_session_lifetime")]
    session_lifetime: String,
    #[serde(default = "Vec::new")]
    roles: Vec<RoleRule<R, S>>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    token_roles: Option<Vec<String>>,
    #[serde(default)]
    auth_params: BTreeMap<String, String>,
}

impl<R, S> TryFrom<RawOidcConfig<R, S>> for OidcConfig<R, S>
where
    R: FromStr,
    R::Err: fmt::Display,
{
    type Error = String;

    fn try_from(raw: RawOidcConfig<R, S>) -> Result<Self, String> {
        check_issuer(&raw.issuer)?;
        check_name("client_id", &raw.client_id)?;
        if let Some(cli) = &raw.cli_client_id {
            check_name("cli_client_id", cli)?;
            if *cli == raw.client_id {
                return Err(format!(
                    "cli_client_id {cli:?} must differ from client_id: the CLI is a public client \
                     of its own"
                ));
            }
        }
        if raw.cli_client_secret_file.is_some() && raw.cli_client_id.is_none() {
            return Err("cli_client_secret_file is set but cli_client_id is not".into());
        }
        for (key, p) in [
            ("client_secret_file", &raw.client_secret_file),
            ("cli_client_secret_file", &raw.cli_client_secret_file),
            ("ca_file", &raw.ca_file),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                return Err(format!("{key} {p:?} must be an absolute path"));
            }
        }
        check_scopes(&raw.scopes)?;
        check_name("groups_claim", &raw.groups_claim)?;
        check_name("name_claim", &raw.name_claim)?;
        let session_lifetime = parse_lifetime(&raw.session_lifetime)?;
        let token_roles = match raw.token_roles {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|r| r.parse().map_err(|e| format!("token_roles: {e}")))
                    .collect::<Result<Vec<R>, String>>()?,
            ),
        };
        for (k, v) in &raw.auth_params {
            if RESERVED_PARAMS.contains(&k.as_str()) {
                return Err(format!(
                    "auth_params.{k}: jitgate sets this parameter itself and it cannot be changed"
                ));
            }
            if k.is_empty() || k.chars().chain(v.chars()).any(|c| c.is_control()) {
                return Err(format!("auth_params.{k}: empty name or control characters"));
            }
        }
        Ok(OidcConfig {
            issuer: raw.issuer,
            client_id: raw.client_id,
            client_secret_file: raw.client_secret_file,
            cli_client_id: raw.cli_client_id,
            cli_client_secret_file: raw.cli_client_secret_file,
            scopes: raw.scopes,
            groups_claim: raw.groups_claim,
            name_claim: raw.name_claim,
            session_lifetime,
            roles: raw.roles,
            ca_file: raw.ca_file,
            token_roles,
            auth_params: raw.auth_params,
        })
    }
}

fn check_issuer(issuer: &str) -> Result<(), String> {
    let url = openidconnect::url::Url::parse(issuer)
        .map_err(|e| format!("issuer {issuer:?} is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!("issuer {issuer:?} must be an https URL"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("issuer {issuer:?} has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() || issuer.contains('#') {
        return Err(format!(
            "issuer {issuer:?} must have no query or fragment (OpenID Connect Discovery §2)"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("issuer {issuer:?} must not carry credentials"));
    }
    Ok(())
}

/// Client ids and claim names: 1 to 256 bytes, no control characters.
fn check_name(key: &str, value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > 256 || value.chars().any(|c| c.is_control()) {
        return Err(format!(
            "{key} {value:?} must be 1 to 256 bytes without control characters"
        ));
    }
    Ok(())
}

/// RFC 6749 §3.3: scope tokens are printable ASCII without space, `"` or `\`.
fn check_scopes(scopes: &[String]) -> Result<(), String> {
    for s in scopes {
        let ok = !s.is_empty()
            && s.bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !ok {
            return Err(format!("scopes: {s:?} is not a scope token"));
        }
    }
    if !scopes.iter().any(|s| s == "openid") {
        return Err("scopes must contain \"openid\"".into());
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(d) = scopes.iter().find(|s| !seen.insert(s.as_str())) {
        return Err(format!("scopes: {d:?} is listed twice"));
    }
    Ok(())
}

fn parse_lifetime(s: &str) -> Result<Duration, String> {
    let d: jiff::SignedDuration = s.parse().map_err(|e| {
        format!("session_lifetime {s:?} is not a duration ({e}); write hours, e.g. PT8H or PT24H")
    })?;
    let d = Duration::try_from(d)
        .map_err(|_| format!("session_lifetime {s:?} must not be negative"))?;
    if !(MIN_SESSION_LIFETIME..=MAX_SESSION_LIFETIME).contains(&d) {
        return Err(format!(
            "session_lifetime {s:?} is outside PT5M..PT168H (5 minutes to 7 days)"
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[oidc]
issuer = "https://login.example.net/realms/corp"
client_id = "jitgate"
client_secret_file = "/etc/jitgate/oidc-secret"
cli_client_id = "jitgate-cli"
scopes = ["openid", "profile", "email", "groups"]
groups_claim = "groups"
name_claim = "preferred_username"
session_lifetime = "PT8H"
token_roles = ["requester"]
[[oidc.roles]]
group = "jit-admins"
role = "admin"
scope = "*"
[[oidc.roles]]
group = "prod-ops"
role = "requester"
scope = "rg:prod"
"#;

    /// A role type with the controller's shape: only three names parse.
    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Role {
        Reader,
        Requester,
        Admin,
    }
    impl FromStr for Role {
        type Err = String;
        fn from_str(s: &str) -> Result<Role, String> {
            match s {
                "reader" => Ok(Role::Reader),
                "requester" => Ok(Role::Requester),
                "admin" => Ok(Role::Admin),
                _ => Err(format!(
                    "role {s:?} is invalid: use reader, requester or admin"
                )),
            }
        }
    }

    fn parse(text: &str) -> Result<OidcConfig<Role, String>, ConfigError> {
        OidcConfig::from_toml(text)
    }

    #[test]
    fn the_issue_example_parses() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.issuer, "https://login.example.net/realms/corp");
        assert_eq!(c.session_lifetime, Duration::from_secs(8 * 3600));
        assert_eq!(c.roles.len(), 2);
        assert_eq!(c.roles[0].role, Role::Admin);
        assert_eq!(c.roles[1].scope, "rg:prod");
        assert!(c.token_role_allowed(&Role::Requester));
        assert!(!c.token_role_allowed(&Role::Admin));
        assert!(!c.token_role_allowed(&Role::Reader));
    }

    #[test]
    fn defaults_for_a_minimal_table() {
        let c = parse(
            "[oidc]\nissuer = \"https://accounts.google.com\"\nclient_id = \"x.apps.googleusercontent.com\"\n",
        )
        .unwrap();
        assert_eq!(c.scopes, ["openid", "profile", "email"]);
        assert_eq!(c.groups_claim, "groups");
        assert_eq!(c.name_claim, "preferred_username");
        assert_eq!(c.session_lifetime, Duration::from_secs(8 * 3600));
        assert!(c.roles.is_empty() && c.token_roles.is_none() && c.cli_client_id.is_none());
        assert!(c.token_role_allowed(&Role::Admin));
    }

    #[test]
    fn every_bad_value_is_named() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "issuer = \"https://login.example.net/realms/corp\"",
                "issuer = \"http://login.example.net\"",
                "https",
            ),
            (
                "issuer = \"https://login.example.net/realms/corp\"",
                "issuer = \"https://x.example/?a=b\"",
                "query",
            ),
            (
                "issuer = \"https://login.example.net/realms/corp\"",
                "issuer = \"https://x.example/#f\"",
                "fragment",
            ),
            (
                "issuer = \"https://login.example.net/realms/corp\"",
                "issuer = \"not a url\"",
                "not a URL",
            ),
            (
                "cli_client_id = \"jitgate-cli\"",
                "cli_client_id = \"jitgate\"",
                "must differ",
            ),
            ("client_id = \"jitgate\"", "client_id = \"\"", "client_id"),
            (
                "\"/etc/jitgate/oidc-secret\"",
                "\"oidc-secret\"",
                "absolute",
            ),
            (
                "scopes = [\"openid\", \"profile\", \"email\", \"groups\"]",
                "scopes = [\"profile\"]",
                "openid",
            ),
            (
                "scopes = [\"openid\", \"profile\", \"email\", \"groups\"]",
                "scopes = [\"openid\", \"a b\"]",
                "scope token",
            ),
            (
                "scopes = [\"openid\", \"profile\", \"email\", \"groups\"]",
                "scopes = [\"openid\", \"openid\"]",
                "twice",
            ),
            (
                "groups_claim = \"groups\"",
                "groups_claim = \"\"",
                "groups_claim",
            ),
            (
                "session_lifetime = \"PT8H\"",
                "session_lifetime = \"PT1M\"",
                "PT5M..PT168H",
            ),
            (
                "session_lifetime = \"PT8H\"",
                "session_lifetime = \"PT200H\"",
                "PT5M..PT168H",
            ),
            (
                "session_lifetime = \"PT8H\"",
                "session_lifetime = \"eight hours\"",
                "session_lifetime",
            ),
            (
                "session_lifetime = \"PT8H\"",
                "session_lifetime = \"-PT8H\"",
                "negative",
            ),
            (
                "role = \"admin\"",
                "role = \"root\"",
                "use reader, requester or admin",
            ),
            (
                "token_roles = [\"requester\"]",
                "token_roles = [\"boss\"]",
                "token_roles",
            ),
            ("group = \"jit-admins\"", "group = \"\"", "group"),
            (
                "scope = \"*\"",
                "scope = \"*\"\ncolour = \"red\"",
                "unknown field `colour`",
            ),
            (
                "name_claim = \"preferred_username\"",
                "name_claim = \"preferred_username\"\nverify_tls = false",
                "unknown field `verify_tls`",
            ),
            (
                "name_claim = \"preferred_username\"",
                "name_claim = \"preferred_username\"\nauth_params = { state = \"x\" }",
                "sets this parameter itself",
            ),
        ];
        for (from, to, needle) in cases {
            assert!(GOOD.contains(from), "{from}");
            let text = GOOD.replacen(from, to, 1);
            let e = parse(&text).expect_err(to).to_string();
            assert!(e.contains(needle), "{to}: {e}");
        }
    }

    #[test]
    fn session_lifetime_accepts_iso_and_friendly_forms() {
        for (s, secs) in [
            ("PT8H", 8 * 3600),
            ("PT30M", 1800),
            ("PT168H", 7 * 24 * 3600),
            ("12h", 12 * 3600),
        ] {
            assert_eq!(parse_lifetime(s).unwrap(), Duration::from_secs(secs), "{s}");
        }
    }
}
