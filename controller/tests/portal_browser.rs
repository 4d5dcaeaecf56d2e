//! The portal's sign-in in a real browser (headless Chromium through jitgate-browser): a
//! person types into the real OpenID provider's login form, lands on the controller's
//! session page, and signs out; a hostile page on another origin of the same site cannot
//! sign them out. At every page of the controller: no console error or CSP violation, no
//! serious or critical axe-core violation, the security headers, and a screenshot. And the
//! approval flow with two people in two browsers: a requester and an approver.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../oidc/tests/support/mod.rs"]
mod rp_support;
#[path = "common/signin.rs"]
mod signin;

use std::time::{Duration, Instant};

use common::lab::{HOSTILE, apply_next_grant, lab};
use jitgate_browser::{Browser, BrowserOptions, StaticSite};
use jitgate_oidc_testprovider::TestProvider;

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

/// A Chromium of its own for `login`, signed in through the provider's form (password and
/// consent), on the JIT page.
async fn signed_in(
    name: &str,
    login: &str,
    h: &common::Harness,
    op: &TestProvider,
    public: &str,
) -> Browser {
    let b = Browser::start(
        BrowserOptions::new(name)
            .trust(h.dir.server_cert())
            .trust(op.cert_file())
            .check_headers_of(public)
            .ignore(&format!("{}/favicon.ico", op.issuer())),
    )
    .await
    .unwrap();
    b.goto(&format!("{public}/auth/login?return=/jit"))
        .await
        .unwrap();
    b.wait_for_url(&format!("{}/interaction/", op.issuer()))
        .await
        .unwrap();
    b.fill("input[name=login]", login).await.unwrap();
    b.fill("input[name=password]", &format!("{login}-password"))
        .await
        .unwrap();
    b.click_button("Sign in").await.unwrap();
    b.wait_for_text("asks for").await.unwrap();
    b.click_button("Allow").await.unwrap();
    b.wait_for_url(&format!("{public}/jit")).await.unwrap();
    b.wait_for_text(&format!("Signed in as {login}"))
        .await
        .unwrap();
    b
}

/// Waits until the live section's `#status` reads `want`; the page is never reloaded (a
/// mark set in the document must survive: htmx swaps the section in place).
async fn wait_for_status(b: &Browser, want: &str) {
    b.execute("window.jitMark = 'same-document'; return null;", vec![])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = match b.find("#status").await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        if now == want {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "status still {now:?}, not {want:?}:\n{}",
            b.text().await.unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        b.execute("return window.jitMark || null;", vec![])
            .await
            .unwrap(),
        "same-document",
        "the page was reloaded"
    );
}

/// The buttons of the live section (they follow the status).
async fn buttons(b: &Browser) -> Vec<String> {
    let v = b
        .execute(
            "return Array.from(document.querySelectorAll('#live button')).map(e => e.textContent);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(v).unwrap()
}

/// The text of the element `css` ("" if it is not there).
async fn error_text(b: &Browser, css: &str) -> String {
    match b.find(css).await {
        Ok(e) => e.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the element `css` says `want` (contains it; "" means: is empty).
async fn wait_for_error(b: &Browser, css: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = error_text(b, css).await;
        if (want.is_empty() && now.is_empty()) || (!want.is_empty() && now.contains(want)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{css} says {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Bob (requester on rg:prod) asks for RDP to web2 from the office range in his browser.
async fn bob_requests_rdp(
    bob: &Browser,
    public: &str,
    justification: &str,
    checked_as_typed: bool,
) -> String {
    bob.goto(&format!("{public}/vms/web2")).await.unwrap();
    bob.click_link("Connect with RDP").await.unwrap();
    bob.wait_for_text("Ports of web2").await.unwrap();
    let rdp = bob
        .find("input[name=port][value=\"web2|3389\"]")
        .await
        .unwrap();
    assert!(
        rdp.is_selected().await.unwrap(),
        "RDP's port is preselected by the connection type"
    );
    bob.click("input[name=source][value=range]").await.unwrap();
    if checked_as_typed {
        // Checked on the server as it is typed, before any submission: a range that does
        // not parse, then one the policy does not allow for RDP, each next to its field.
        bob.fill("#range", "203.0.113.0/33").await.unwrap();
        wait_for_error(bob, "#range-error", "is not an IP range").await;
        bob.fill("#range", "198.51.100.0/24").await.unwrap();
        wait_for_error(
            bob,
            "#port-errors-web2-3389",
            "not inside the allowed source prefixes",
        )
        .await;
        assert_eq!(error_text(bob, "#range-error").await, "");
        bob.checkpoint("request-form-checked").await;
    }
    bob.fill("#range", "203.0.113.0/24").await.unwrap();
    if checked_as_typed {
        wait_for_error(bob, "#port-errors-web2-3389", "").await;
    }
    bob.click("#duration option[value=PT1H]").await.unwrap();
    bob.fill_label("Justification (required)", justification)
        .await
        .unwrap();
    bob.fill("#login", "bob").await.unwrap();
    bob.click_button("Open ports").await.unwrap();
    bob.wait_for_url(&format!("{public}/requests/"))
        .await
        .unwrap()
}

/// Requester and approver in two browsers: the request waits for the approver's group; the
/// approver sees it in the inbox with everything needed to decide and approves; the
/// requester's page reaches Applied without a reload and offers the .rdp file. A second
/// request is denied with a reason that the requester's page shows as text.
#[tokio::test]
async fn approval_with_requester_and_approver_in_two_browsers() {
    let (_ca, op, h, public) = signin::portal_with_provider().await;
    let (mut agent, creds) = lab(&h).await;
    let bob = signed_in("portal_approval_requester", "bob", &h, &op, &public).await;
    let alice = signed_in("portal_approval_approver", "alice", &h, &op, &public).await;

    // Bob asks; his page says who still has to approve.
    let first = bob_requests_rdp(&bob, &public, "patch night", true).await;
    wait_for_status(&bob, "PendingApproval").await;
    assert_eq!(buttons(&bob).await, ["Cancel"]);
    let live = bob.find("#live").await.unwrap().text().await.unwrap();
    assert!(live.contains("group:jit-admins"), "{live}");
    assert!(live.contains("approved so far: nobody"), "{live}");
    bob.checkpoint("pending").await;
    // Nothing waits for Bob himself.
    bob.goto(&format!("{public}/approvals")).await.unwrap();
    bob.wait_for_text("Nothing waits for your decision")
        .await
        .unwrap();
    bob.goto(&first).await.unwrap();

    // Alice's inbox: requester, ports, source, justification; she approves with a reason.
    alice.goto(&format!("{public}/approvals")).await.unwrap();
    alice
        .wait_for_text("Requests waiting for me")
        .await
        .unwrap();
    let inbox = alice.find("main").await.unwrap().text().await.unwrap();
    assert!(inbox.contains("by bob"), "{inbox}");
    assert!(
        inbox.contains("web2 3389/TCP from 203.0.113.0/24"),
        "{inbox}"
    );
    assert!(inbox.contains("patch night"), "{inbox}");
    alice.checkpoint("inbox").await;
    alice
        .fill_label("Reason (optional)", "change CHG-7 approved")
        .await
        .unwrap();
    alice.click_button("Approve").await.unwrap();
    alice
        .wait_for_text("Nothing waits for your decision")
        .await
        .unwrap();

    // The grant reaches the agent, which applies it: Bob's page follows without a reload.
    apply_next_grant(&mut agent, &creds).await;
    wait_for_status(&bob, "Applied").await;
    let live = bob.find("#live").await.unwrap().text().await.unwrap();
    assert!(
        live.contains("approved") && live.contains("change CHG-7 approved"),
        "the decision with its reason: {live}"
    );
    bob.find("a[download]").await.unwrap();
    assert_eq!(
        buttons(&bob).await,
        ["Revoke"],
        "Cancel went with PendingApproval"
    );
    bob.checkpoint("applied-after-approval").await;

    // A second request, denied with a reason that is hostile markup: shown as text.
    bob_requests_rdp(&bob, &public, "again", false).await;
    wait_for_status(&bob, "PendingApproval").await;
    alice.goto(&format!("{public}/approvals")).await.unwrap();
    alice.wait_for_text("again").await.unwrap();
    alice
        .fill_label("Reason (required)", HOSTILE)
        .await
        .unwrap();
    alice.click_button("Deny").await.unwrap();
    alice
        .wait_for_text("Nothing waits for your decision")
        .await
        .unwrap();
    alice.checkpoint("inbox-empty").await;
    wait_for_status(&bob, "Denied").await;
    let live = bob.find("#live").await.unwrap().text().await.unwrap();
    assert!(live.contains(HOSTILE), "the reason, as typed: {live}");
    let injected = bob
        .execute(
            "return document.querySelectorAll('#live img, #live script').length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(injected, 0);
    assert!(
        buttons(&bob).await.is_empty(),
        "nothing to revoke or cancel"
    );
    bob.checkpoint("denied").await;
    bob.close().await.unwrap();
    alice.close().await.unwrap();
}
