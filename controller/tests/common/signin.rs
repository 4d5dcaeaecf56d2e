//! Sign-in for tests that need people: `[oidc]` for the test provider, with the
//! controller's roles and scopes. Included by path (`#[path = "common/signin.rs"] mod
//! signin;`) next to `mod rp_support;` in the test files that use it.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::Path;

use jitgate_api::{Role, Scope};
use jitgate_oidc::{OidcConfig, RoleRule};

/// `[oidc]` as the relying party's own tests write it (jit-admins: admin on `*`; prod-ops:
/// requester on `rg:prod`), with the controller's roles and scopes, and a third row (prod-ops:
/// reader on `rg:dev`) for unions.
pub fn oidc_config(issuer: &str, ca: &Path) -> OidcConfig<Role, Scope> {
    let c = crate::rp_support::config(issuer, None, ca);
    let mut roles: Vec<RoleRule<Role, Scope>> = c
        .roles
        .iter()
        .map(|r| RoleRule {
            group: r.group.clone(),
            role: r.role.parse().unwrap(),
            scope: r.scope.parse().unwrap(),
        })
        .collect();
    roles.push(RoleRule {
        group: "prod-ops".into(),
        role: Role::Reader,
        scope: "rg:dev".parse().unwrap(),
    });
    OidcConfig {
        issuer: c.issuer,
        client_id: c.client_id,
        client_secret_file: None,
        cli_client_id: c.cli_client_id,
        cli_client_secret_file: None,
        scopes: c.scopes,
        groups_claim: c.groups_claim,
        name_claim: c.name_claim,
        session_lifetime: c.session_lifetime,
        roles,
        ca_file: c.ca_file,
        token_roles: None,
        auth_params: c.auth_params,
    }
}
