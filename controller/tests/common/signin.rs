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

/// A provider, and a controller whose portal signs people in with it, on a port chosen
/// first (the provider's redirect and `public_url` name it): (CA, provider, controller,
/// public URL).
pub async fn portal_with_provider() -> (
    std::sync::Arc<jitgate_oidc_testprovider::TestCa>,
    jitgate_oidc_testprovider::TestProvider,
    crate::common::Harness,
    String,
) {
    portal_with_provider_and(|_| {}).await
}

/// As [`portal_with_provider`], with more of the controller's configuration set by `more`.
pub async fn portal_with_provider_and(
    more: impl FnOnce(&mut jitgate_controller::state::Config),
) -> (
    std::sync::Arc<jitgate_oidc_testprovider::TestCa>,
    jitgate_oidc_testprovider::TestProvider,
    crate::common::Harness,
    String,
) {
    use jitgate_oidc_testprovider::{Setup, TestCa, TestProvider};
    let port = crate::rp_support::free_port();
    let public = format!("https://127.0.0.1:{port}");
    let ca = std::sync::Arc::new(TestCa::new().unwrap());
    let op = TestProvider::start(
        ca.clone(),
        &Setup {
            web_redirect: format!("{public}/auth/callback"),
            ..Setup::default()
        },
    )
    .await
    .unwrap();
    let mut oidc = oidc_config(op.issuer(), ca.ca_file());
    oidc.client_secret_file = Some(op.web_client_secret_file().to_path_buf());
    let h = crate::common::Harness::with_config(|c| {
        c.oidc = Some(oidc);
        c.listen = format!("127.0.0.1:{port}");
        c.public_url = Some(public.clone());
        more(c);
    })
    .await;
    (ca, op, h, public)
}

/// Activity entries about sessions of `operation`, as (caller, details).
pub async fn activity(
    h: &crate::common::Harness,
    operation: &str,
) -> Vec<(String, serde_json::Value)> {
    let (s, v) = h
        .get("/api/v1/activityLog?resourceType=Session", &h.admin)
        .await;
    assert_eq!(s, reqwest::StatusCode::OK, "{v}");
    v["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["operation"] == operation)
        .map(|e| {
            (
                e["caller"].as_str().unwrap().to_string(),
                e["details"].clone(),
            )
        })
        .collect()
}
