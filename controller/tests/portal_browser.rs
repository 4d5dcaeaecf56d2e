//! The portal's sign-in in a real browser (headless Chromium through jitgate-browser): a
//! person types into the real OpenID provider's login form, lands on the controller's
//! session page, and signs out; a hostile page on another origin of the same site cannot
//! sign them out. At every page of the controller: no console error or CSP violation, no
//! serious or critical axe-core violation, the security headers, and a screenshot.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use jitgate_browser::{Browser, BrowserOptions, StaticSite};

#[tokio::test]
async fn sign_in_through_the_provider_and_out_again_in_chromium() {
    let (ca, op, h, public) = signin::portal_with_provider().await;
    // Another origin of the same site (127.0.0.1, another port): SameSite=Lax cookies go
    // along with its form posts, so only the Origin check stands between it and sign-out.
    let evil_cert = ca.server_cert("evil").unwrap();
    let evil = StaticSite::start(&evil_cert.cert_pem, &evil_cert.key_pem, &[])
        .await
        .unwrap();
    let b = Browser::start(
        BrowserOptions::new("portal_sign_in")
            .trust(h.dir.server_cert())
            .trust(op.cert_file())
            .trust(&evil_cert.cert_file)
            .check_headers_of(&public)
            // The provider (a stand-in for the organisation's) and the hostile site have no
            // favicon.
            .ignore(&format!("{}/favicon.ico", op.issuer()))
            .ignore(&evil.url("/favicon.ico")),
    )
    .await
    .unwrap();

    // Not signed in: the page says so (with a 401) and offers sign-in.
    b.expect_console_error("status of 401");
    b.goto(&format!("{public}/auth/session")).await.unwrap();
    b.wait_for_text("Not signed in").await.unwrap();
    b.checkpoint("not-signed-in").await;

    // Sign in: the provider's own form, typed into. (The page's link starts the same
    // sign-in; the return path names this page.)
    let link = b.find("a[href='/auth/login']").await.unwrap();
    assert_eq!(link.text().await.unwrap(), "Sign in");
    b.goto(&format!("{public}/auth/login?return=/auth/session"))
        .await
        .unwrap();
    b.wait_for_url(&format!("{}/interaction/", op.issuer()))
        .await
        .unwrap();
    b.screenshot("provider-login").await.unwrap();
    b.assert_clean().await;
    b.fill("input[name=login]", "alice").await.unwrap();
    b.fill("input[name=password]", "alice-password")
        .await
        .unwrap();
    b.click_button("Sign in").await.unwrap();
    b.wait_for_text("asks for").await.unwrap();
    b.screenshot("provider-consent").await.unwrap();
    b.assert_clean().await;
    b.click_button("Allow").await.unwrap();

    // Back at the controller, signed in: the name as text, the session in a __Host- cookie
    // that page scripts cannot read.
    b.wait_for_url(&format!("{public}/auth/session"))
        .await
        .unwrap();
    b.wait_for_text("Signed in as alice").await.unwrap();
    let text = b.text().await.unwrap();
    assert!(text.contains("admin on *"), "{text}");
    b.checkpoint("signed-in").await;
    let cookies = b.client().get_all_cookies().await.unwrap();
    let session = cookies
        .iter()
        .find(|c| c.name() == "__Host-jitgate-session")
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert!(session.value().starts_with("jitsess_"));
    assert_eq!(session.secure(), Some(true));
    assert_eq!(session.http_only(), Some(true));
    assert_eq!(
        session.same_site().map(|s| s.to_string()).as_deref(),
        Some("Lax")
    );
    assert_eq!(session.path(), Some("/"));
    assert_eq!(
        b.execute("return document.cookie;", vec![]).await.unwrap(),
        ""
    );
    assert!(
        !cookies.iter().any(|c| c.name() == "__Host-jitgate-login"),
        "the sign-in cookie is cleared: {cookies:?}"
    );

    // A hostile page on another origin posts the sign-out form, with the right CSRF token
    // even (as if it had leaked): refused by the Origin check, the session lives on.
    let csrf = b
        .find("input[name=csrf]")
        .await
        .unwrap()
        .attr("value")
        .await
        .unwrap()
        .unwrap();
    evil.set_page(
        "/",
        &format!(
            "<!doctype html><html lang=\"en\"><head><title>Prize</title></head><body><main>\
             <h1>You won</h1><form method=\"post\" action=\"{public}/auth/logout\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{csrf}\">\
             <button type=\"submit\">Claim</button></form></main></body></html>"
        ),
    );
    b.goto(&evil.url("/")).await.unwrap();
    b.wait_for_text("You won").await.unwrap();
    b.assert_clean().await;
    b.expect_console_error("status of 403");
    b.click_button("Claim").await.unwrap();
    b.wait_for_text("did not come from this site")
        .await
        .unwrap();
    assert_eq!(b.url().await.unwrap(), format!("{public}/auth/logout"));
    b.checkpoint("cross-site-sign-out-refused").await;
    assert_eq!(signin::activity(&h, "Sign Out").await.len(), 0);
    b.goto(&format!("{public}/auth/session")).await.unwrap();
    b.wait_for_text("Signed in as alice").await.unwrap();
    b.assert_clean().await;

    // Sign out with the page's own button: the session ends on the server and the cookie
    // goes.
    b.click_button("Sign out").await.unwrap();
    b.wait_for_text("You are signed out").await.unwrap();
    b.checkpoint("signed-out").await;
    assert_eq!(signin::activity(&h, "Sign Out").await.len(), 1);
    let cookies = b.client().get_all_cookies().await.unwrap();
    assert!(
        !cookies.iter().any(|c| c.name() == "__Host-jitgate-session"),
        "{cookies:?}"
    );
    b.expect_console_error("status of 401");
    b.goto(&format!("{public}/auth/session")).await.unwrap();
    b.wait_for_text("Not signed in").await.unwrap();
    b.checkpoint("not-signed-in-after-sign-out").await;
    b.close().await.unwrap();
}
