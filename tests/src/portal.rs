//! What the browser tests of the portal share: Chromium in the workstation namespace, a
//! one-time sign-in link, hostile strings and the check that none of them became markup.

use std::path::Path;

use jitgate_browser::{Browser, BrowserOptions};

use crate::controller::ControllerProc;

/// Strings meant to break out of HTML text or attributes, or to run as a URL, and bidi
/// controls that reorder what is shown.
pub const HOSTILE: &str = "deploy <script>window.jitPwned=1</script> \
                           \"><img src=x onerror=window.jitPwned=2> \
                           javascript:window.jitPwned=3 \u{202E}txt.exe\u{202C} end";

/// Chromium inside the workstation namespace `ws`, trusting the controller's certificate
/// and checking the headers of `origin`'s pages.
pub async fn workstation_browser(
    name: &str,
    ws: &Path,
    ctl: &ControllerProc,
    origin: &str,
) -> Browser {
    match Browser::start(
        BrowserOptions::new(name)
            .netns(ws)
            .trust(ctl.state.join("tls/server.crt"))
            .check_headers_of(origin),
    )
    .await
    {
        Ok(b) => b,
        Err(e) => panic!("{name}: Chromium did not start: {e}"),
    }
}

/// A one-time sign-in link for alice, admin on everything.
pub fn admin_link(ctl: &ControllerProc) -> serde_json::Value {
    ctl.admin(&[
        "login-link",
        "--name",
        "alice",
        "--role",
        "admin",
        "--scope",
        "*",
    ])
}

/// No element the hostile strings could have made exists: no image, no inline script, no
/// `javascript:` link, no event-handler attribute; and none of them ran.
pub async fn assert_nothing_injected(b: &Browser) {
    let found = b
        .execute(
            "return Array.from(document.querySelectorAll('img, script:not([src]), \
             a[href^=\"javascript:\"], [onerror], [onload], [onclick]'))\
             .map(e => e.outerHTML);",
            vec![],
        )
        .await
        .unwrap_or_else(|e| panic!("the page's elements: {e}"));
    assert_eq!(found, serde_json::json!([]), "injected elements");
    let ran = b
        .execute("return window.jitPwned || null;", vec![])
        .await
        .unwrap_or_else(|e| panic!("window.jitPwned: {e}"));
    assert!(ran.is_null(), "a hostile string ran: {ran}");
}
